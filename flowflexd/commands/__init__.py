"""The command line: run, once, check, status, explain, replay, example, emulator."""
