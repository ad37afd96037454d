"""BlameTrail suspect scoring: rank the deploys that most likely caused an incident."""
