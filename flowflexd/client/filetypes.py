"""The file types FlowFlex accepts as assets, and its size cap."""

from __future__ import annotations

MAX_FILE_BYTES = 25 * 1024 * 1024  # 26,214,400: the backend's asset cap

MIME_BY_EXTENSION: dict[str, str] = {
    "pdf": "application/pdf",
    "doc": "application/msword",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xls": "application/vnd.ms-excel",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "ppt": "application/vnd.ms-powerpoint",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "txt": "text/plain",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "mp4": "video/mp4",
    "3gp": "video/3gpp",
    "aac": "audio/aac",
    "amr": "audio/amr",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
}

ALLOWED_MIMES: frozenset[str] = frozenset(MIME_BY_EXTENSION.values())


def mime_for_name(name: str) -> str | None:
    """The MIME type FlowFlex expects for a file name, from its extension."""
    _, dot, ext = name.rpartition(".")
    return MIME_BY_EXTENSION.get(ext.lower()) if dot else None
