"""The library's error types for what a user can fix. Anything else the library raises is a bug
in it or in its caller (a wrong argument type, a broken invariant): trainers show a
:class:`UserError` in one line and treat every other exception as a bug."""


class UserError(ValueError):
    """Input a user can fix: an argument, the data, a checkpoint, a run folder. The message is one
    line that names the argument, file or value and says what to do."""


class DataError(UserError):
    """The data cannot be used as given: a missing or empty folder, a bad file list or shard
    pattern, classes that do not match, nothing decodable left. The message names the path."""
