"""read_parameters: the generation parameters stored in an image file, whichever tool wrote them.

Where each tool puts them (and what happens to them here):

    A1111, Forge, SD.Next, sdkit   PNG text chunk "parameters" (tEXt, zTXt or iTXt); JPEG/WEBP: EXIF UserComment
    NovelAI                        PNG chunks "Description" (prompt), "Comment" (JSON), Software "NovelAI"
    Fooocus                        "parameters" / UserComment as JSON (fooocus_scheme or MakerNote "fooocus")
    SwarmUI                        "parameters" / UserComment as JSON {"sui_image_params": {...}}
    InvokeAI 3+                    PNG chunk "invokeai_metadata" (JSON); 2.x: "sd-metadata" and "Dream": refused
    ComfyUI                        PNG chunks "prompt" (the node graph) and "workflow"; basic graphs only

All of them become one Infotext (prompt, negative prompt, A1111-named settings), read by metadata.to_keywords.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from . import comfyui, foreign
from .foreign import Refused
from .metadata import Infotext, split_infotext, to_keywords

_EXIF_IFD, _USER_COMMENT, _MAKER_NOTE, _MAKE, _MODEL = 0x8769, 0x9286, 0x927C, 0x010F, 0x0110


class NoParameters(ValueError):
    """An image that carries no generation parameters at all (a photo), as opposed to one sdkit refuses."""


def read_parameters(path_or_image: str | Path | Image.Image) -> dict:
    """The generation parameters stored in an image (PNG, JPEG, WEBP), as generate()'s keywords.

    Settings sdkit has no keyword for are kept under their A1111 names ("Clip skip", "Model hash", "Hires
    upscale", ...) or, for other tools' settings with no A1111 name, under the tool's own. A file with no
    parameters, or with a tool's parameters sdkit cannot read reliably, is a ValueError naming the file.
    """
    if isinstance(path_or_image, Image.Image):
        return to_keywords(_find(path_or_image, "image"))
    where = str(path_or_image)
    try:
        with Image.open(path_or_image) as image:
            return to_keywords(_find(image, where))
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"{where!r} cannot be read as an image: {e}") from None


def _find(image: Image.Image, where: str) -> Infotext:
    try:
        info = _infotext(image)
        if info is None and image.format == "PNG":  # text chunks after the pixel data: PIL reads them at load()
            image.load()
            info = _infotext(image)
    except Refused as e:
        raise ValueError(f"{where!r}: {e}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:  # a record with unexpected types
        raise ValueError(f"{where!r}: its generation metadata is malformed ({type(e).__name__}: {e})") from None
    if info is None:
        raise NoParameters(f"{where!r} has no generation parameters (no 'parameters' PNG text chunk, no EXIF "
                         "UserComment, nor another tool's metadata)")
    return info


def _infotext(image: Image.Image) -> Infotext | None:
    items = image.info
    exif = _exif(image) if "exif" in items else None
    text = items.get("parameters")
    if exif is not None and (comment := _user_comment(exif)):
        text = comment  # A1111: the EXIF comment wins over a PNG chunk

    if items.get("Software") == "NovelAI":
        return foreign.novelai(items, image.size)
    if isinstance(text, str) and (data := _json(text)) is not None:
        scheme = items.get("fooocus_scheme") or (exif.get(_MAKER_NOTE) if exif is not None else None)
        return foreign.from_json(data, scheme, image.size)
    if isinstance(text, str) and text.strip():
        return split_infotext(text)

    if "invokeai_metadata" in items:
        return foreign.invokeai(_json(items["invokeai_metadata"]))
    if "sd-metadata" in items or "Dream" in items:
        raise Refused("made with InvokeAI 2.x ('sd-metadata'/'Dream' chunks), which sdkit does not read; "
                      "InvokeAI 3 and later ('invokeai_metadata') are read")
    graph, workflow = items.get("prompt"), items.get("workflow")
    if exif is not None:  # ComfyUI's WEBP: "prompt:{...}" in EXIF Model, "workflow:{...}" in Make
        graph = graph or _prefixed(exif.get(_MODEL), "prompt:")
        workflow = workflow or _prefixed(exif.get(_MAKE), "workflow:")
    if workflow is not None or _json(graph) is not None:  # a plain-text "prompt" chunk is another tool's
        return comfyui.read(graph)
    return None


def _exif(image: Image.Image) -> Image.Exif | None:
    """The EXIF block, with the Exif IFD read; None if it is malformed (A1111 likewise reads on without it)."""
    try:
        exif = image.getexif()
        exif.get_ifd(_EXIF_IFD)
        return exif
    except Exception:  # PIL raises a different error for each way EXIF can be broken
        return None


def _user_comment(exif: Image.Exif) -> str | None:
    """EXIF UserComment, in the Exif IFD (A1111 via piexif) or IFD0 (Fooocus via PIL), decoded by its 8-byte
    prefix as piexif does, and like A1111 falling back to UTF-8 for an unknown one."""
    value = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT, exif.get(_USER_COMMENT))
    if isinstance(value, str):  # written as ASCII type: PIL decodes Latin-1, writers mostly wrote UTF-8
        try:
            return value.encode("latin-1").decode("utf-8").rstrip("\0")
        except UnicodeError:
            return value.rstrip("\0")
    if not isinstance(value, bytes):
        return None
    prefix, body = value[:8], value[8:]
    if prefix == b"UNICODE\0":
        text = _utf16(body, exif.endian)
    elif prefix == b"ASCII\0\0\0":
        text = body.decode("utf-8", errors="replace")
    elif prefix == b"JIS\0\0\0\0\0":
        text = body.decode("shift_jis", errors="replace")
    elif prefix == b"\0" * 8:
        text = body.decode("utf-8", errors="ignore")
    else:
        text = value.decode("utf-8", errors="ignore")
    return text.rstrip("\0")


def _utf16(body: bytes, endian: str | None) -> str:
    """piexif writes UTF-16 big-endian whatever the file's byte order, others follow the file's: a byte-order
    mark decides, else the zero high bytes of (mostly ASCII) text, else the file's order."""
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return body.decode("utf-16", errors="replace")
    zeros_even, zeros_odd = body[0::2].count(0), body[1::2].count(0)
    if zeros_even != zeros_odd:
        big = zeros_even > zeros_odd
    else:
        big = endian != "<"
    return body.decode("utf-16-be" if big else "utf-16-le", errors="replace")


def _json(text) -> dict | list | None:
    """The JSON a chunk holds, or None if it is not JSON (an A1111 prompt may well start with "{")."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str) or not text.lstrip().startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _prefixed(value, prefix: str) -> str | None:
    return value[len(prefix):] if isinstance(value, str) and value.startswith(prefix) else None
