"""Exit statuses, shared by the command line, the verbs and the apply sequence."""

EXIT_OK, EXIT_FAIL, EXIT_INVALID, EXIT_PARTIAL = 0, 1, 2, 3
EXIT_USAGE = 64  # sysexits' EX_USAGE: the command line itself is wrong
EXIT_STOPPED = 128 + 15  # SIGTERM: stopped while applying; everything was given back
