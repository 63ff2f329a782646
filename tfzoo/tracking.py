"""A holder for Python state that Keras must not track or save."""


class Untracked:
    """Attributes that Keras' layer tracking and SavedModel ignore.

    Keras wraps dict and list attributes of layers to track (and save) what they hold,
    and forbids adding sublayers once a layer is built. Caches of compiled functions
    or helper layers without weights live in one of these instead.

    Example:
    >>> holder = Untracked(functions={})
    >>> holder.functions
    {}
    """

    def __init__(self, **values):
        self.__dict__.update(values)
