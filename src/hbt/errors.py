"""One error type per kind of failure, each rendered by the entry points as a single line."""


class HbtError(Exception):
    """Base class: entry points print ``str(err)`` on one line and exit non-zero."""


class ConfigError(HbtError):
    """A configuration value is missing, unknown or out of range; names the config key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        super().__init__(f"config error: {key}: {problem}")


class DataError(HbtError):
    """An input file or dataset row is malformed; names ``file:line`` (or the row) and the problem."""

    def __init__(self, where: str, problem: str):
        self.where = where
        super().__init__(f"data error: {where}: {problem}")


class OutputError(HbtError):
    """Writing would overwrite earlier results."""

    def __init__(self, path: str, problem: str):
        self.path = path
        super().__init__(f"output error: {path}: {problem}")


class TrainingDiverged(HbtError):
    """The loss became NaN or infinite; training stops without touching existing checkpoints."""

    def __init__(self, step: int, value: float):
        self.step = step
        super().__init__(f"training diverged: loss is {value} at step {step}; checkpoints saved before it are intact")


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (its type's name where it has none): what a
    one-line error quotes of a library's report."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def hbt_cause(err: BaseException | None) -> HbtError | None:
    """The HbtError behind ``err``, following its causes and contexts (hydra.utils.instantiate wraps the
    errors of the objects it builds), or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, HbtError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def write_failure(err: BaseException) -> str | None:
    """Why a write failed, when ``err`` is the operating system refusing it (no space, quota, permissions,
    a file size limit), however the writing library wrapped it (torch raises a RuntimeError from its
    zip writer over the OSError; safetensors its own error naming the OS error); else None."""
    seen = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current.strerror or str(current)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    text = str(err)
    if "I/O error: " in text:
        return text.split("I/O error: ", 1)[1].split(" (os error")[0]
    return None
