"""Secrets hygiene: what the redactor masks (pure logic)."""

from harness import redact


def test_registered_values_are_masked():
    redact.register("s3cr3t-value-123")
    assert redact.mask("user x used s3cr3t-value-123 here") == "user x used *** here"


def test_tokens_and_config_lines_are_masked():
    token = "gAAAAABn" + "x" * 60
    text = f"X-Auth-Token: {token}\nkek = abcdefg\n  login = 1234\nother = fine"
    masked = redact.mask(text)
    assert token not in masked
    assert "abcdefg" not in masked and "1234" not in masked
    assert "other = fine" in masked
