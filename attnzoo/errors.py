"""Exceptions and warnings raised by attnzoo."""


class AttnzooError(Exception):
    """Base class of attnzoo's errors."""


class UnknownNameError(AttnzooError, KeyError):
    """A variant, score or option name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(AttnzooError, ValueError):
    """Two plugins registered the same name."""


class PluginLoadWarning(UserWarning):
    """A plugin failed to import or to register; the registry carries on without it."""
