"""A corpus of bad requests against the API, each with the exact 4xx it must get.

Data, not code: each :class:`BadRequest` says what to send and what must come
back. ``tests/test_bad_input.py`` sends them to the API under gunicorn over real
HTTP. Placeholders in ``path`` and in form values are filled in at run time:
``{alice_job}`` (a real job of ALICE's), ``{pending_job}`` (a pending job of
ALICE's that never runs) and ``{api}`` (the API's own address, on 127.0.0.1).
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image

from common.imageio import encode
from common.settings import DEFAULT_MAX_BYTES
from tests.images import crafted_png, png_chunk
from tests.tokens import ALICE, BOB

COMPACT = "realesr-animevideov3"

Payload = bytes | Callable[[], bytes]
"""A file's bytes, or a function making them (for the big ones, built only when sent)."""


# --- payloads ------------------------------------------------------------------------


def _pixels(h: int = 24, w: int = 24) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


PNG = encode(_pixels(), "png")
JPEG = encode(_pixels(), "jpeg")
TRUNCATED_PNG = PNG[: len(PNG) // 2]
TRUNCATED_JPEG = JPEG[: len(JPEG) // 2]
TEXT = b"hello, this is a plain text file and not an image at all\n" * 4
SVG = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="24" height="24">'
    b'<rect width="24" height="24" fill="red"/></svg>\n'
)
HTML = b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
BOMB = crafted_png(100_000, 100_000)
LARGE_PNG = encode(_pixels(512, 512), "png")
"""Enough pixels that realesrgan-x4plus needs far more than a second on any CPU."""


def _animated(fmt: str, **params: Any) -> bytes:
    frames = [PIL.Image.new("RGB", (16, 16), (50 * i, 20, 200 - 50 * i)) for i in range(3)]
    out = io.BytesIO()
    frames[0].save(out, fmt, save_all=True, append_images=frames[1:], **params)
    return out.getvalue()


ANIMATED_WEBP = _animated("WEBP")
APNG = _animated("PNG")
ANIMATED_GIF = _animated("GIF")
MULTI_PAGE_TIFF = _animated("TIFF")


def multipart(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body of ``(name, filename or None, data)`` parts, and its
    Content-Type: for what ``requests`` will not send (two parts of one name)."""
    boundary = "srcluster-test-boundary"
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


TWO_FILES, TWO_FILES_TYPE = multipart(
    ("model", None, b"realesr-animevideov3"), ("file", "a.png", PNG), ("file", "b.png", PNG)
)
TWO_MODELS, TWO_MODELS_TYPE = multipart(
    ("model", None, b"realesr-animevideov3"), ("model", None, b"realesrgan-x4plus"),
    ("file", "a.png", PNG),
)  # fmt: skip
URL_AS_FILE, URL_AS_FILE_TYPE = multipart(
    ("model", None, b"realesr-animevideov3"), ("url", "u.txt", b"https://example.com/a.png")
)
ZERO_WIDTH = crafted_png(0, 24)


# --- round 2: files that pass the header check and still cost what they should not ----


def with_chunks(png: bytes, *chunks: bytes) -> bytes:
    """``png`` with ``chunks`` inserted after its IHDR."""
    return png[:33] + b"".join(chunks) + png[33:]


ICC_BOMB = with_chunks(
    PNG, png_chunk(b"iCCP", b"icc\x00\x00" + np.random.default_rng(1).bytes(2 << 20))
)
ZTXT_BOMB = with_chunks(PNG, png_chunk(b"zTXt", b"Comment\x00\x00" + b"\x78\x9c" + bytes(2 << 20)))
ITXT_BOMB = with_chunks(PNG, png_chunk(b"iTXt", b"XML\x00\x00\x00\x00\x00" + b"x" * (2 << 20)))
EXIF_BOMB = with_chunks(PNG, png_chunk(b"eXIf", b"MM\x00*" + bytes(2 << 20)))
INFLATING_ZTXT = with_chunks(
    PNG, png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(bytes(200 << 20), 9))
)
"""200 KB of zTXt that inflates to 200 MB (Pillow stops at 1 MB: a damaged file to us)."""
MANY_CHUNKS = with_chunks(PNG, png_chunk(b"abCd", b"") * 100_000)
"""1.2 MB of empty chunks (48 MB of them cost 22.6 s and 600 MB before these bounds)."""
MANY_TEXT = with_chunks(PNG, *[png_chunk(b"tEXt", b"k\x00" + b"v" * 900_000) for _ in range(12)])
"""Twelve text chunks of 0.9 MB: each under the one-chunk bound, 10.8 MB together."""


def _progressive_jpeg(scans: int) -> bytes:
    """A progressive JPEG whose last scan is repeated until it has ``scans`` scans."""
    out = io.BytesIO()
    PIL.Image.fromarray(_pixels(64, 64)).save(out, "JPEG", progressive=True, quality=90)
    data = out.getvalue()
    last = data.rfind(b"\xff\xda")
    body, eoi = data[last:-2], data[-2:]
    have = data.count(b"\xff\xda")
    return data[:-2] + body * (scans - have) + eoi


MANY_SCANS = _progressive_jpeg(2000)


def _pages(count: int, size: int = 16) -> bytes:
    frames = [PIL.Image.new("RGB", (size, size), (i % 256, 20, 90)) for i in range(count)]
    out = io.BytesIO()
    frames[0].save(out, "TIFF", save_all=True, append_images=frames[1:])
    return out.getvalue()


MANY_PAGES_TIFF = _pages(300)
RGBA16 = encode(np.full((64, 64, 4), 40000, np.uint16), "png")
"""A small 16-bit RGBA PNG: raw, a 9000x9000 result of it is 648 MB."""
FLAT_2112 = encode(np.full((2112, 2112, 3), 90, np.uint8), "png")
"""A flat 2112x2112 PNG of a few KB: 4356 tiles of 32."""


def over_the_byte_limit() -> bytes:
    """One byte over the default upload limit, starting like a PNG."""
    return PNG[:16] + b"\x00" * (DEFAULT_MAX_BYTES + 1 - 16)


# --- the cases -------------------------------------------------------------------


ALICE_AUTH = {"X-Token": ALICE}
BOB_AUTH = {"X-Token": BOB}
ZEROS = "0" * 32


@dataclass(frozen=True)
class BadRequest:
    name: str
    status: int
    code: str
    method: str = "POST"
    path: str = "/sr"
    headers: dict[str, str] = field(default_factory=lambda: dict(ALICE_AUTH))
    form: dict[str, str] = field(default_factory=lambda: {"model": COMPACT})
    files: dict[str, tuple[str, Payload, str]] = field(default_factory=dict)
    body: bytes | None = None
    """Sent as is (no form, no files), with ``headers``."""
    raw: bool = False
    """Sent with http.client: the path exactly as written (no dot-segment clean-up) and
    the headers as given (a ``Content-Length`` that the body does not match)."""
    parameter: str | None = None
    """``detail["parameter"]`` the reply must name."""


def image(data: Payload, name: str = "in.png", mime: str = "image/png") -> dict[str, Any]:
    return {"file": (name, data, mime)}


def param(name: str, value: str, code: str = "bad_parameter") -> BadRequest:
    """A good image with one bad form field (422 naming it)."""
    return BadRequest(
        name=f"{name}={value!r}",
        status=422,
        code=code,
        form={"model": COMPACT, name: value},
        files=image(PNG),
        parameter=name,
    )


def url(name: str, value: str) -> BadRequest:
    """No file, and a ``url`` the fetcher must refuse without fetching."""
    return BadRequest(
        name=name,
        status=422,
        code="bad_parameter",
        form={"model": COMPACT, "url": value},
        parameter="url",
    )


CASES: list[BadRequest] = [
    # --- who is calling
    BadRequest("no token", 401, "unauthorized", headers={}, files=image(PNG)),
    BadRequest("wrong token", 401, "unauthorized", headers={"X-Token": "x" * 32}, files=image(PNG)),
    BadRequest("blank token", 401, "unauthorized", headers={"X-Token": " "}, raw=True),
    BadRequest(
        "wrong bearer", 401, "unauthorized", headers={"Authorization": "Bearer " + "y" * 32}
    ),
    BadRequest(
        "basic auth is not a token",
        401,
        "unauthorized",
        headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"},
    ),
    BadRequest("token prefix of a real one", 401, "unauthorized", headers={"X-Token": ALICE[:-1]}),
    BadRequest("no token on result", 401, "unauthorized", "GET", f"/result/{ZEROS}", headers={}),
    BadRequest("no token on delete", 401, "unauthorized", "DELETE", "/result/{alice_job}", {}),
    # --- the image: where it comes from
    BadRequest("empty body", 422, "bad_parameter", form={}, parameter="file"),
    BadRequest("neither file nor url", 422, "bad_parameter", parameter="file"),
    BadRequest(
        "both file and url",
        422,
        "bad_parameter",
        form={"model": COMPACT, "url": "https://example.com/a.png"},
        files=image(PNG),
        parameter="file",
    ),
    BadRequest(
        "file as a plain form field",
        422,
        "bad_parameter",
        form={"model": COMPACT, "file": "iVBORw0KGgo="},
        parameter="file",
    ),
    BadRequest(
        "json body instead of multipart",
        422,
        "bad_parameter",
        headers={**ALICE_AUTH, "Content-Type": "application/json"},
        body=b'{"model": "realesr-animevideov3", "url": "https://example.com/a.png"}',
        parameter="file",
    ),
    BadRequest(
        "multipart without a boundary",
        422,
        "bad_parameter",
        headers={**ALICE_AUTH, "Content-Type": "multipart/form-data"},
        body=b"--x\r\ncontent-disposition: form-data; name=url\r\n\r\nhttp://a/\r\n--x--\r\n",
        parameter="file",
    ),
    BadRequest(
        "multipart cut short",
        422,
        "bad_parameter",
        headers={**ALICE_AUTH, "Content-Type": "multipart/form-data; boundary=xyz"},
        body=b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n\x89PNG',
        parameter="file",
    ),
    # --- the image: what it is
    BadRequest("zero-byte file", 415, "unsupported_image", files=image(b"", "empty.png")),
    BadRequest("truncated png", 415, "unsupported_image", files=image(TRUNCATED_PNG)),
    BadRequest(
        "truncated jpeg",
        415,
        "unsupported_image",
        files=image(TRUNCATED_JPEG, "in.jpg", "image/jpeg"),
    ),
    BadRequest("text named .png", 415, "unsupported_image", files=image(TEXT)),
    BadRequest("svg", 415, "unsupported_image", files=image(SVG, "in.svg", "image/svg+xml")),
    BadRequest("html named .png", 415, "unsupported_image", files=image(HTML)),
    BadRequest("gif input", 415, "unsupported_image", files=image(GIF, "in.gif", "image/gif")),
    BadRequest("png of zero width", 415, "unsupported_image", files=image(ZERO_WIDTH)),
    BadRequest("decompression bomb 100000x100000", 413, "too_large", files=image(BOMB)),
    BadRequest("png with a 2 MiB iCCP chunk", 413, "too_large", files=image(ICC_BOMB)),
    BadRequest("png with a 2 MiB zTXt chunk", 413, "too_large", files=image(ZTXT_BOMB)),
    BadRequest("png with a 2 MiB iTXt chunk", 413, "too_large", files=image(ITXT_BOMB)),
    BadRequest("png with a 2 MiB eXIf chunk", 413, "too_large", files=image(EXIF_BOMB)),
    BadRequest(
        "png with a zTXt inflating to 200 MB", 415, "unsupported_image", files=image(INFLATING_ZTXT)
    ),
    BadRequest("png with 100000 empty chunks", 413, "too_large", files=image(MANY_CHUNKS)),
    BadRequest("png with 10.8 MB of text chunks", 413, "too_large", files=image(MANY_TEXT)),
    BadRequest(
        "progressive jpeg of 2000 scans",
        413,
        "too_large",
        files=image(MANY_SCANS, "in.jpg", "image/jpeg"),
    ),
    BadRequest(
        "tiff of 300 pages",
        422,
        "animated_image",
        files=image(MANY_PAGES_TIFF, "a.tif", "image/tiff"),
        parameter="file",
    ),
    BadRequest(
        "file one byte over the limit",
        413,
        "too_large",
        files=image(over_the_byte_limit),
    ),
    BadRequest(
        "content-length over the limit",
        413,
        "too_large",
        headers={
            **ALICE_AUTH,
            "Content-Type": "multipart/form-data; boundary=xyz",
            "Content-Length": str(DEFAULT_MAX_BYTES + 10**6),
        },
        body=b"--xyz\r\n",
        raw=True,
    ),
    # --- parameters
    param("model", "no-such-model", code="unknown_model"),
    param("model", "../../etc/passwd", code="unknown_model"),
    param("scale", "1"),
    param("scale", "9"),
    param("scale", "nan"),
    param("scale", "inf"),
    param("scale", "two"),
    param("tile_size", "0"),
    param("tile_size", "99999"),
    param("tile_size", "64.5"),
    param("tile_pad", "-1"),
    param("tile_pad", "129"),
    param("tile_pad", "wide"),
    param("skip_alpha", "maybe"),
    param("resize_to", "abc"),
    param("resize_to", "0x0"),
    param("resize_to", "1/0"),
    param("resize_to", "0/3"),
    param("resize_to", "-5x10"),
    # --- what the job would make: refused at submit, not after every tile ran
    BadRequest(
        "tile_pad 128 on tile_size 32",
        422,
        "bad_parameter",
        form={"model": COMPACT, "tile_size": "32", "tile_pad": "128"},
        files=image(PNG),
        parameter="tile_pad",
    ),
    BadRequest(
        "4356 tiles of 32 for a few KB",
        422,
        "bad_parameter",
        form={"model": COMPACT, "tile_size": "32", "tile_pad": "8"},
        files=image(FLAT_2112),
        parameter="tile_size",
    ),
    BadRequest(
        "16-bit RGBA to a 9000x9000 tiff (648 MB raw)",
        422,
        "bad_parameter",
        form={"model": COMPACT, "resize_to": "9000x9000", "format": "tiff"},
        files=image(RGBA16),
        parameter="resize_to",
    ),
    BadRequest(
        "webp wider than 16383",
        422,
        "bad_parameter",
        form={"model": COMPACT, "resize_to": "16384x64", "format": "webp"},
        files=image(PNG),
        parameter="resize_to",
    ),
    BadRequest(
        "jpeg wider than 65500",
        422,
        "bad_parameter",
        form={"model": COMPACT, "resize_to": "70000x8", "format": "jpeg"},
        files=image(PNG),
        parameter="resize_to",
    ),
    BadRequest(
        "a 1x20000 png as webp (80000 px tall)",
        422,
        "bad_parameter",
        form={"model": COMPACT, "format": "webp"},
        files=image(lambda: encode(np.zeros((20000, 1, 3), np.uint8), "png")),
        parameter="format",
    ),
    param("format", "gif"),
    param("format", "../png"),
    param("timeout", "-1"),
    param("timeout", "0"),
    param("timeout", "3601"),
    param("timeout", "1.5"),
    # --- url: refused before anything is fetched
    url("url file://", "file:///etc/passwd"),
    url("url ftp://", "ftp://example.com/a.png"),
    url("url gopher://", "gopher://127.0.0.1:6379/_FLUSHALL"),
    url("url to 127.0.0.1 (the API itself)", "{api}/healthz"),
    url("url to localhost", "http://localhost/a.png"),
    url("url to [::1]", "http://[::1]/a.png"),
    url("url to 0.0.0.0", "http://0.0.0.0/a.png"),
    url("url to decimal 127.0.0.1", "http://2130706433/a.png"),
    url("url to cloud metadata", "http://169.254.169.254/latest/meta-data/"),
    url("url to 10/8", "http://10.0.0.1/a.png"),
    url("url with credentials", "http://user:secret@example.com/a.png"),
    url("url without host", "http:///a.png"),
    url("url with a bad port", "http://example.com:99999/a.png"),
    url("url with a broken ipv6 host", "http://[::1/a.png"),
    url("url with a host NFKC breaks", "http://a\u2100b/a.png"),
    url("url not a url", "not a url"),
    # --- honest answers at submit: no field ignored, no frame dropped, no hopeless job run
    BadRequest(
        "misspelled field scael",
        422,
        "unknown_field",
        form={"model": COMPACT, "scael": "2"},
        files=image(PNG),
        parameter="scael",
    ),
    BadRequest(
        "unknown field outscale (Real-ESRGAN's name)",
        422,
        "unknown_field",
        form={"model": COMPACT, "outscale": "2"},
        files=image(PNG),
        parameter="outscale",
    ),
    BadRequest(
        "several unknown fields: the first named",
        422,
        "unknown_field",
        form={"model": COMPACT, "zeta": "1", "alpha": "1"},
        files=image(PNG),
        parameter="alpha",
    ),
    BadRequest(
        "two file parts",
        422,
        "bad_parameter",
        headers={**ALICE_AUTH, "Content-Type": TWO_FILES_TYPE},
        body=TWO_FILES,
        parameter="file",
    ),
    BadRequest(
        "model given twice",
        422,
        "bad_parameter",
        headers={**ALICE_AUTH, "Content-Type": TWO_MODELS_TYPE},
        body=TWO_MODELS,
        parameter="model",
    ),
    BadRequest(
        "url sent as a file part",
        422,
        "bad_parameter",
        headers={**ALICE_AUTH, "Content-Type": URL_AS_FILE_TYPE},
        body=URL_AS_FILE,
        parameter="url",
    ),
    BadRequest(
        "animated webp",
        422,
        "animated_image",
        files=image(ANIMATED_WEBP, "a.webp", "image/webp"),
        parameter="file",
    ),
    BadRequest("apng", 422, "animated_image", files=image(APNG), parameter="file"),
    BadRequest(
        "animated gif",
        422,
        "animated_image",
        files=image(ANIMATED_GIF, "a.gif", "image/gif"),
        parameter="file",
    ),
    BadRequest(
        "multi-page tiff",
        422,
        "animated_image",
        files=image(MULTI_PAGE_TIFF, "a.tif", "image/tiff"),
        parameter="file",
    ),
    BadRequest(
        "x4plus on 512x512 within 1 s",
        422,
        "job_too_long",
        form={"model": "realesrgan-x4plus", "timeout": "1"},
        files=image(LARGE_PNG),
        parameter="timeout",
    ),
    BadRequest(
        "CORS preflight from an origin not allowed",
        403,
        "origin_not_allowed",
        "OPTIONS",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        form={},
    ),
    # --- jobs: ids, owners, states
    BadRequest("unknown task id", 404, "not_found", "GET", f"/result/{ZEROS}"),
    BadRequest("unknown task id: download", 404, "not_found", "GET", f"/result/{ZEROS}/download"),
    BadRequest("unknown task id: delete", 404, "not_found", "DELETE", f"/result/{ZEROS}"),
    BadRequest("malformed task id", 404, "not_found", "GET", "/result/xyz"),
    BadRequest("upper-case task id", 404, "not_found", "GET", "/result/" + "A" * 32),
    BadRequest("another token's task", 404, "not_found", "GET", "/result/{alice_job}", BOB_AUTH),
    BadRequest(
        "another token's download",
        404,
        "not_found",
        "GET",
        "/result/{alice_job}/download",
        BOB_AUTH,
    ),
    BadRequest(
        "another token's delete", 404, "not_found", "DELETE", "/result/{alice_job}", BOB_AUTH
    ),
    BadRequest(
        "download before success", 409, "not_ready", "GET", "/result/{pending_job}/download"
    ),
    BadRequest(
        "path-like id ../../etc/passwd",
        404,
        "not_found",
        "GET",
        "/result/../../etc/passwd",
        raw=True,
    ),
    BadRequest(
        "url-encoded path-like id",
        404,
        "not_found",
        "GET",
        "/result/..%2F..%2Fetc%2Fpasswd",
        raw=True,
    ),
    BadRequest(
        "url-encoded path-like id: download",
        404,
        "not_found",
        "GET",
        "/result/..%2F..%2Fetc%2Fpasswd/download",
        raw=True,
    ),
    BadRequest("id with a NUL", 404, "not_found", "GET", f"/result/{ZEROS}%00", raw=True),
    # --- routes and methods
    BadRequest("GET /sr", 405, "method_not_allowed", "GET", "/sr"),
    BadRequest("PUT /sr", 405, "method_not_allowed", "PUT", "/sr"),
    BadRequest("POST /result/x", 405, "method_not_allowed", "POST", "/result/x"),
    BadRequest("POST /healthz", 405, "method_not_allowed", "POST", "/healthz"),
    BadRequest("unknown route", 404, "not_found", "GET", "/admin"),
    BadRequest("unknown route under /result", 404, "not_found", "GET", f"/result/{ZEROS}/x/y"),
]
