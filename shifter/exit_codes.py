"""The exit codes of every shifter command: the one table.

Python reads the constants below (``shifter.command`` maps each outcome to one of them);
the compiled launcher (``runtime/launcher/*.c``) includes the header
``c_header()`` renders from this same table at build time (``setup.py``), as
``SHIFTER_EXIT_<NAME>``.  docs/dev.md ("Failing") shows the table; the unit tests check
that the docs, this module and the installed launcher agree.

No imports: ``setup.py`` loads this file by path, before shifter is installed.
"""

OK = 0
FAILURE = 1
USAGE = 2
CONFIG = 3
LAUNCH = 125
NOT_EXECUTABLE = 126
NOT_FOUND = 127
SIGNAL_BASE = 128
INTERRUPTED = 130
BROKEN_PIPE = 141

#: name -> what the code means, in the order of the table in docs/dev.md
MEANING = {
    "OK": "success",
    "FAILURE": "the command failed: a site fault, a service that does not answer, a failed pull, "
               "an internal error",
    "USAGE": "the user's input is wrong: an option, an image name, a volume map, a module list",
    "CONFIG": "the site's configuration is wrong (udiRoot.conf, imagemanager.json)",
    "LAUNCH": "`shifter` itself failed: the container could not be made or entered, whatever the "
              "cause (1-124 belong to the command it runs, as with `docker run`)",
    "NOT_EXECUTABLE": "`shifter`: the command exists in the container but can't be executed",
    "NOT_FOUND": "`shifter`: the command was not found in the container",
    "SIGNAL_BASE": "`shifter`: 128+N, the command was killed by signal N",
    "INTERRUPTED": "interrupted by SIGINT (^C), 128+2",
    "BROKEN_PIPE": "the reader of stdout went away (128+SIGPIPE): nothing more is said",
}


def table() -> list[tuple[str, int, str]]:
    """(NAME, code, meaning) for every code, in the documented order."""
    return [(name, globals()[name], meaning) for name, meaning in MEANING.items()]


def c_header() -> str:
    """The C header of this table (``#define SHIFTER_EXIT_<NAME> <code>``, and the list
    ``SHIFTER_EXIT_TABLE`` the launcher prints with SHIFTER_LAUNCHER_PRINT_EXIT_CODES)."""
    lines = ["/* Generated at build time from shifter/exit_codes.py (shifter/exit_codes.py): do not edit. */",
             "#ifndef SHIFTER_EXIT_CODES_H", "#define SHIFTER_EXIT_CODES_H", ""]
    lines += [f"#define SHIFTER_EXIT_{name} {code}" for name, code, _ in table()]
    lines += ["", "#define SHIFTER_EXIT_TABLE \\"]
    lines += [f"    X({name}, {code}) \\" for name, code, _ in table()]
    lines += ["", "#endif", ""]
    return "\n".join(lines)
