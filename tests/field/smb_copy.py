"""A real SMB2 client in its own process: copies a local file to a share, paced.

``--set-size`` copies the way Windows Explorer does: it sets the file's full
size first (SMB2 SET_INFO FileEndOfFileInformation), then fills it, so the
unfilled end is a hole until the last write. Run as a program so the tests can
pause (SIGSTOP) and kill it like any other client.
"""

from __future__ import annotations

import argparse
import time

import smbclient

CHUNK = 256 * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--share", default="inbox")
    parser.add_argument("--name", required=True)
    parser.add_argument("--src", required=True)
    parser.add_argument("--rate", type=int, default=0, help="bytes per second; 0: unpaced")
    parser.add_argument("--set-size", action="store_true")
    args = parser.parse_args()

    smbclient.register_session(
        "127.0.0.1", username=args.user, password=args.password, port=args.port, encrypt=False
    )
    with open(args.src, "rb") as src:
        data = src.read()
    remote = rf"\\127.0.0.1\{args.share}\{args.name}"
    with smbclient.open_file(remote, mode="wb", port=args.port) as out:
        if args.set_size:
            out.truncate(len(data))
            out.seek(0)
        for start in range(0, len(data), CHUNK):
            out.write(data[start : start + CHUNK])
            out.flush()
            if args.rate:
                time.sleep(CHUNK / args.rate)  # pacing, not synchronisation
    print("copied", flush=True)


if __name__ == "__main__":
    main()
