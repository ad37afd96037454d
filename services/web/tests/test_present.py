"""Pure: the row filters (time_tag, status_badge, severity_badge) give the markup the macros gave
and escape whatever they are handed (a status or a time from the API is data)."""

from __future__ import annotations

from blametrail_web.present import severity_badge, status_badge, time_tag

XSS = '"><script>alert(1)</script>'


def test_a_time_is_a_time_tag_in_utc_and_no_time_is_a_dash() -> None:
    assert str(time_tag("2024-05-01T14:00:03+02:00")) == (
        '<time datetime="2024-05-01T12:00:03Z" title="2024-05-01 12:00:03 UTC">'
        "2024-05-01 12:00:03 UTC</time>"
    )
    assert str(time_tag(None)) == str(time_tag("")) == '<span class="muted">—</span>'


def test_what_is_not_a_time_is_shown_escaped_as_text() -> None:
    got = str(time_tag(XSS))
    assert "<script>" not in got
    assert got == (
        '<time datetime="" title="&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;">'
        "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;</time>"
    )


def test_badges_show_the_word_and_escape_the_value() -> None:
    assert str(status_badge("open")) == '<span class="badge status-open">Open</span>'
    assert str(severity_badge("sev2")) == '<span class="badge sev sev-sev2">SEV2</span>'
    for got in (str(status_badge(XSS)), str(severity_badge(XSS))):
        assert "<script>" not in got, got
        assert '"><' not in got, got
