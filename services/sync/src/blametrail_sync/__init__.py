"""The write-back worker: BlameTrail incident states mirrored onto Sentry issues."""
