"""Errors in what the user gave us (config, data, work directory).

``python -m ssl4eo_jax.main`` prints these as one clear message without a traceback; each message
names the culprit (file, key, value) and the fix.
"""


class UserError(ValueError):
    """A problem with the user's input rather than a bug."""


class ConfigError(UserError):
    """An unknown or inconsistent config value."""
