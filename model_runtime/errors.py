"""RequestInputError: the base of every error the runtime raises about a request's own input.

A prompt, a media item, a sampling setting or a grammar that the runtime refuses raises a
subclass of it (processing, layout, sampling, grammar), with a message written for the caller:
it names the value, never the runtime's internals. Any other exception the runtime raises is an
internal fault, whatever its type (a plain ValueError included).
"""


class RequestInputError(ValueError):
    """A request's input the runtime refuses; its message is meant for the caller."""
