"""Exceptions with messages that say what was wrong and what is accepted."""


class UnsupportedLayerError(TypeError):
    """A dense layer the library cannot run sparse (names its module path; the reason says what is
    accepted, for an unregistered type the list of registered ones)."""

    def __init__(self, path: str, module, reason: str = ""):
        self.path = path
        self.module_type = type(module).__name__
        detail = f": {reason}" if reason else ""
        super().__init__(
            f"cannot make layer '{path or '<root>'}' ({type(module).__module__}.{self.module_type}) sparse{detail}")
