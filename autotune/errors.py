"""The tool's own error type: one clear line for the user, exit code 2."""


class AutotuneError(Exception):
    """Bad input or an unusable environment.

    The message is a single line that says what is wrong, where (file or flag) and how to fix it.
    The CLI prints it and exits with code 2; nothing else may leak a traceback to the user.
    """

    exit_code = 2
