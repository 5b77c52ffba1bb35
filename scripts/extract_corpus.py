#!/usr/bin/env python3
"""Turns the unpacked Debian packages of the whale-mini corpus into clean text.

scripts/fetch_corpus.sh downloads the packages and unpacks each one with
`dpkg-deb -R` into ROOT/<package>/; this script reads them from there and
writes OUT/<name>.txt plus OUT/MANIFEST.json. Python 3.11 standard library
only: the SWORD modules (zText/zCom) and the R lazy-load databases are read
directly, so neither libsword nor R has to be installed.

Output format (every file): UTF-8, NFC, "\\n" line ends. Text is a sequence
of blocks separated by one empty line. A prose paragraph is one line; a block
of verse (Bible poetry, poems in the novels and dictionaries) keeps one line
per verse line. Headings (book titles, "CHAPTER I", ...) are blocks of their
own. The file ends with a single "\\n".

Deduplication: sources are processed in the fixed order of SOURCES; a block
whose text (whitespace-collapsed) is at least DEDUP_MIN_CHARS characters long
and already appeared earlier in the corpus (in any file) is dropped. Shorter
blocks (headings such as "CHAPTER 1", "Psalm 23", short verses) are always
kept. See docs/corpus.md.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import hashlib
import html
import json
import lzma
import os
import re
import struct
import sys
import unicodedata
import zlib
from pathlib import Path

DEDUP_MIN_CHARS = 80
EXTRACTOR_VERSION = 1


class SourceError(RuntimeError):
    pass


# ---------------------------------------------------------------- packages --

class Package:
    def __init__(self, root: Path, name: str):
        self.name = name
        self.dir = root / name
        control = self.dir / "DEBIAN" / "control"
        if not control.is_file():
            raise SourceError(f"{name}: {control} missing (run scripts/fetch_corpus.sh)")
        fields = {}
        for line in control.read_text(encoding="utf-8").splitlines():
            m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
            if m:
                fields[m.group(1)] = m.group(2)
        self.version = fields["Version"]
        self.copyright_path = f"/usr/share/doc/{name}/copyright"
        self.copyright = (self.dir / self.copyright_path.lstrip("/")).read_text(encoding="utf-8")

    def path(self, p: str) -> Path:
        return self.dir / p.lstrip("/")

    def check_licence(self, quote: str) -> None:
        # The licence text quoted in the manifest and docs must still be in the
        # copyright file of the version that was fetched.
        norm = lambda s: " ".join(s.split())
        if norm(quote) not in norm(self.copyright):
            raise SourceError(f"{self.name}: licence statement {quote!r} not found in {self.copyright_path}")


# ------------------------------------------------------------ SWORD reader --

def sword_entries(moddir: Path):
    """Yields the raw entries of a SWORD zText/zCom/zCom4 module, OT then NT,
    in versification order, skipping empty entries and repeated (linked)
    entries that point at the same text."""
    for testament in ("ot", "nt"):
        for ext, vsize in (("bz", 10), ("cz", 12)):
            if (moddir / f"{testament}.{ext}s").exists():
                break
        else:
            continue
        bzs = (moddir / f"{testament}.{ext}s").read_bytes()
        bzv = (moddir / f"{testament}.{ext}v").read_bytes()
        bzz = (moddir / f"{testament}.{ext}z").read_bytes()
        if not bzz:
            continue
        blocks = [struct.unpack_from("<III", bzs, i) for i in range(0, len(bzs), 12)]
        cache_key, cache = None, b""
        seen = set()
        for i in range(len(bzv) // vsize):
            if vsize == 10:
                block, offset, size = struct.unpack_from("<IIH", bzv, i * 10)
            else:
                block, offset, size = struct.unpack_from("<III", bzv, i * 12)
            if size == 0 or (block, offset, size) in seen:
                continue
            seen.add((block, offset, size))
            if block != cache_key:
                off, csize, usize = blocks[block]
                cache = zlib.decompress(bzz[off:off + csize])
                if len(cache) != usize:
                    raise SourceError(f"{moddir}: block {block} has the wrong size")
                cache_key = block
            text = cache[offset:offset + size].decode("utf-8")
            # One over-long entry of engWEB2015eb (Daniel with Greek portions)
            # is cut short in the module and ends inside a tag: drop the rest.
            lt = text.rfind("<")
            if lt > text.rfind(">"):
                text = text[:lt]
            yield text


_TOKEN = re.compile(r"<(/?)([A-Za-z][\w:]*)((?:\s+[\w:]+\s*=\s*\"[^\"]*\")*)\s*(/?)>|([^<]+)|(<)")
_ATTR = re.compile(r"([\w:]+)\s*=\s*\"([^\"]*)\"")
NOTE_MARK = "\x00"  # where a footnote was removed


class Doc:
    """Collects blocks of lines."""

    def __init__(self):
        self.blocks: list[list[str]] = []
        self.lines: list[str] = []
        self.cur: list[str] = []

    def text(self, s: str):
        self.cur.append(s)

    def line_break(self):
        line = "".join(self.cur)
        self.cur = []
        if line.strip():
            self.lines.append(line)

    def block_break(self):
        self.line_break()
        if self.lines:
            self.blocks.append(self.lines)
            self.lines = []

    def empty_since(self, n_blocks: int) -> bool:
        return len(self.blocks) == n_blocks and not self.lines and not "".join(self.cur).strip()

    def finish(self) -> list[list[str]]:
        self.block_break()
        return self.blocks


BLOCK_TAGS = {"title", "lg", "list", "table", "p", "chapter", "speaker"}
LINE_TAGS = {"l", "item", "row"}


def osis_to_blocks(entries) -> list[list[str]]:
    """Renders SWORD OSIS entries as plain text: footnotes and cross-references
    (<note>) removed, Strong's numbers and other markup dropped, paragraphs,
    titles and poetry lines kept as structure."""
    doc = Doc()
    skip = 0  # depth inside <note>
    title_end = -1  # len(doc.blocks) right after the last main title
    merge_title = main_title = False
    for entry in entries:
        for m in _TOKEN.finditer(entry):
            close, tag, attrs, selfclose, text, lt = m.groups()
            if text is not None or lt is not None:
                if not skip:
                    doc.text(html.unescape(text if text is not None else lt).replace("\n", " "))
                continue
            if tag == "note":
                if selfclose:
                    continue
                if close:
                    skip -= 1
                    if skip == 0:
                        doc.text(NOTE_MARK)
                else:
                    skip += 1
                continue
            if skip:
                continue
            a = dict(_ATTR.findall(attrs))
            if tag == "div":
                if a.get("type") != "x-milestone":
                    doc.block_break()
            elif tag == "milestone":
                if a.get("type") == "x-chapterLabel" and a.get("n"):
                    doc.block_break()
                    doc.text(a["n"])
                    doc.block_break()
            elif tag == "lb":
                if a.get("type") == "x-p":
                    doc.block_break()
                else:
                    doc.line_break()
            elif tag == "title":
                # Consecutive main titles ("The First Book of Moses," "Commonly
                # Called" "Genesis") make one heading line.
                doc.block_break()
                if close:
                    if merge_title and len(doc.blocks) >= 2:
                        last = doc.blocks.pop()
                        doc.blocks[-1][-1] += " " + " ".join(last)
                    title_end = len(doc.blocks) if main_title else -1
                    merge_title = False
                elif not selfclose:
                    main_title = a.get("type") == "main"
                    merge_title = main_title and doc.empty_since(title_end)
            elif tag in BLOCK_TAGS:
                doc.block_break()
            elif tag in LINE_TAGS:
                doc.line_break()
            elif tag == "cell" and close:
                doc.text(" ")
            # everything else (w, q, hi, seg, rdg, reference, transChange, ...)
            # is transparent: its text stays, the tag goes.
        doc.text(" ")  # entries (verses) are separated by a space
    return [[fix_note_marks(l) for l in b] for b in doc.finish()]


def fix_note_marks(line: str) -> str:
    # A removed footnote leaves a word break unless punctuation follows it
    # ("God<note/>created" -> "God created", "offspring.<note/>”" -> "offspring.”").
    line = re.sub(NOTE_MARK + r"+", NOTE_MARK, line)
    line = re.sub(r"\s*" + NOTE_MARK + r"\s*(?=[”’)\].,;:?!]|$)", "", line)
    line = re.sub(r"(?<=[“‘(\[])\s*" + NOTE_MARK + r"\s*", "", line)
    return line.replace(NOTE_MARK, " ")


# -------------------------------------------------------- R lazy-load DB --

class _RReader:
    def __init__(self, data: bytes):
        self.b, self.p, self.refs = data, 0, []

    def int(self) -> int:
        v = struct.unpack_from(">i", self.b, self.p)[0]
        self.p += 4
        return v

    def raw(self, n: int) -> bytes:
        v = self.b[self.p:self.p + n]
        self.p += n
        return v


def r_unserialize(data: bytes):
    """Minimal reader of R's XDR serialization (versions 2 and 3): character,
    integer, logical, double vectors, lists, pairlists and symbols — what
    data sets of plain text use. Vectors come back as dicts with 'v' and
    'attr'; pairlists as lists of (tag, value)."""
    r = _RReader(data)
    if r.raw(2) != b"X\n":
        raise SourceError("not an XDR R serialization")
    version = r.int()
    r.int(), r.int()
    if version == 3:
        r.raw(r.int())  # native encoding
    return _r_item(r)


def _r_item(r: _RReader):
    flags = r.int()
    t = flags & 0xFF
    has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
    if t in (254, 242, 253, 251, 252):  # NULL, emptyenv, globalenv, unbound, missing
        return None
    if t == 255:  # reference to an earlier symbol
        return r.refs[(flags >> 8) - 1]
    if t == 1:  # SYMSXP
        sym = ("sym", _r_item(r))
        r.refs.append(sym)
        return sym
    if t == 9:  # CHARSXP
        n = r.int()
        if n == -1:
            return None  # NA_character_
        levels = flags >> 12
        return r.raw(n).decode("latin-1" if levels & 4 else "utf-8")
    if t == 2:  # LISTSXP (pairlist)
        out = []
        while True:
            if has_attr:
                _r_item(r)
            tag = _r_item(r) if has_tag else None
            out.append((tag[1] if tag else None, _r_item(r)))
            flags = r.int()
            t = flags & 0xFF
            has_attr, has_tag = flags & (1 << 9), flags & (1 << 10)
            if t == 254:
                return out
            if t != 2:
                raise SourceError(f"unsupported pairlist tail (SEXP type {t})")
    if t in (16, 19, 20):  # STRSXP, VECSXP, EXPRSXP
        v = [_r_item(r) for _ in range(r.int())]
    elif t in (10, 13):  # LGLSXP, INTSXP
        n = r.int()
        v = list(struct.unpack_from(f">{n}i", r.b, r.p))
        r.p += 4 * n
    elif t == 14:  # REALSXP
        n = r.int()
        v = list(struct.unpack_from(f">{n}d", r.b, r.p))
        r.p += 8 * n
    else:
        raise SourceError(f"unsupported R SEXP type {t}")
    attr = dict(_r_item(r)) if has_attr else {}
    return {"type": t, "v": v, "attr": attr}


def _r_blob(b: bytes) -> bytes:
    n = struct.unpack(">I", b[:4])[0]
    kind = b[4:5]
    if kind in (b"Z", b"2", b"X", b"0"):
        out = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress,
               b"0": lambda x: x}[kind](b[5:])
    else:
        out = zlib.decompress(b[4:])
    if len(out) != n:
        raise SourceError("R lazy-load record has the wrong size")
    return out


def r_lazyload(base: Path) -> dict:
    """Reads every object of an R lazy-load database (BASE.rdx + BASE.rdb)."""
    rdx = Path(str(base) + ".rdx").read_bytes()
    index = r_unserialize(gzip.decompress(rdx) if rdx[:2] == b"\x1f\x8b" else _r_blob(rdx))
    names = index["attr"]["names"]["v"]
    variables = index["v"][names.index("variables")]
    rdb = Path(str(base) + ".rdb").read_bytes()
    out = {}
    for name, ent in zip(variables["attr"]["names"]["v"], variables["v"]):
        off, length = (int(x) for x in ent["v"])
        out[name] = r_unserialize(_r_blob(rdb[off:off + length]))
    return out


def r_character(obj, what: str) -> list[str]:
    if not isinstance(obj, dict) or obj["type"] != 16:
        raise SourceError(f"{what} is not a character vector")
    return ["" if s is None else s for s in obj["v"]]


# ------------------------------------------------------- plain-text reflow --

def reflow(lines: list[str], indent: int = 2) -> list[list[str]]:
    """Turns hard-wrapped plain text into blocks. Blank lines separate blocks.
    A block whose lines are all indented (>= indent spaces) is verse or a
    quotation laid out line by line and keeps its line breaks; otherwise it is
    prose: lines are joined, and an indented line starts a new paragraph
    (the old-fashioned paragraph indent)."""
    blocks, cur = [], []
    for line in lines + [""]:
        line = line.rstrip()
        if line.strip():
            cur.append(line)
            continue
        if not cur:
            continue
        ind = [len(l) - len(l.lstrip(" ")) for l in cur]
        if cur[0].lstrip().startswith("•"):
            blocks.append([" ".join(l.strip() for l in cur)])  # a wrapped list item
        elif all(i >= indent for i in ind):
            blocks.append([l.strip() for l in cur])
        else:
            para: list[str] = []
            for l, i in zip(cur, ind):
                if i >= indent and para:
                    blocks.append([" ".join(para)])
                    para = []
                para.append(l.strip())
            blocks.append([" ".join(para)])
        cur = []
    return blocks


def cut(lines: list[str], start: str | None, end: str | None, what: str) -> list[str]:
    """lines[index of the first line equal to start : first line equal to end]."""
    s = 0
    if start is not None:
        try:
            s = [l.strip() for l in lines].index(start)
        except ValueError:
            raise SourceError(f"{what}: start marker {start!r} not found") from None
    e = len(lines)
    if end is not None:
        try:
            e = s + [l.strip() for l in lines[s:]].index(end)
        except ValueError:
            raise SourceError(f"{what}: end marker {end!r} not found") from None
    return lines[s:e]


def gutenberg_italics(blocks):
    # _word_ marks italics in these Gutenberg texts.
    return [[re.sub(r"(?<!\w)_([^_\n]+?)_(?!\w)", r"\1", l) for l in b] for b in blocks]


# ------------------------------------------------------------- the sources --

def src_sword(pkg: Package, moddir: str):
    return osis_to_blocks(sword_entries(pkg.path(moddir)))


AUSTEN = {
    # object in janeaustenr -> (file, title, end marker or None)
    "sensesensibility": ("austen-sense-and-sensibility", "Sense and Sensibility", None),
    "prideprejudice": ("austen-pride-and-prejudice", "Pride and Prejudice", None),
    "mansfieldpark": ("austen-mansfield-park", "Mansfield Park", None),
    "emma": ("austen-emma", "Emma", None),
    # The last lines of this object are "A NOTE ON THE TEXT" from a modern
    # (Signet Classic) edition, not Austen's: cut off.
    "northangerabbey": ("austen-northanger-abbey", "Northanger Abbey", "A NOTE ON THE TEXT"),
    "persuasion": ("austen-persuasion", "Persuasion", None),
}


def src_austen(pkg: Package, obj: str):
    data = r_lazyload(pkg.path("/usr/lib/R/site-library/janeaustenr/data/Rdata"))
    lines = r_character(data[obj], obj)
    end = AUSTEN[obj][2]
    return gutenberg_italics(reflow(cut(lines, None, end, obj)))


def src_moby(pkg: Package):
    data = r_lazyload(pkg.path("/usr/lib/R/site-library/tokenizers/data/Rdata"))
    text = r_character(data["mobydick"], "mobydick")[0].lstrip("\ufeff")
    lines = text.replace("\r\n", "\n").split("\n")
    # Drop Project Gutenberg's header, the transcriber's notes and the licence
    # at the end: keep Melville's text from ETYMOLOGY to the last chapter.
    body = cut(lines, "ETYMOLOGY.", "End of Project Gutenberg's Moby Dick; or The Whale, by Herman Melville",
               "mobydick")
    return [["MOBY DICK; OR THE WHALE"], ["By Herman Melville"]] + gutenberg_italics(reflow(body))


_DICTD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_num(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _DICTD_B64.index(c)
    return n


def src_devil(pkg: Package):
    data = gzip.decompress(pkg.path("/usr/share/dictd/devil.dict.dz").read_bytes())
    spans = set()
    info = None
    for line in pkg.path("/usr/share/dictd/devil.index").read_text(encoding="utf-8").splitlines():
        word, off, size = line.split("\t")
        span = (_dictd_num(off), _dictd_num(size))
        if word == "00databaseinfo":
            info = span
        elif not word.startswith("00database"):
            spans.add(span)
    if info is None:
        raise SourceError("devil: no 00databaseinfo entry")
    head = data[info[0]:info[0] + info[1]].decode("utf-8").split("\n")
    # The info entry holds the Wiretap title page and Bierce's preface.
    lines = ["THE DEVIL'S DICTIONARY", "", "By Ambrose Bierce", ""] + cut(head, "PREFACE", None, "devil")
    for off, size in sorted(spans):
        lines += [""] + data[off:off + size].decode("utf-8").split("\n")
    return gutenberg_italics(reflow(lines))


HEADING = "\x01"


def src_jargon(pkg: Package):
    text = gzip.decompress(pkg.path("/usr/share/doc/jargon-text/jargon.txt.gz").read_bytes()).decode("utf-8")
    lines = text.split("\n")
    # The second "Welcome to the Jargon File" is the start of the text proper
    # (the first is in the table of contents).
    starts = [i for i, l in enumerate(lines) if l.strip() == "Welcome to the Jargon File"]
    if len(starts) < 2:
        raise SourceError("jargon: start marker not found")
    lines = lines[starts[1]:]
    # Everything is indented by three spaces; headings ("Chapter 1. ...",
    # "Appendix A. ...") are not: mark them so that they are never taken
    # for a table of contents below.
    lines = [l[3:] if l.startswith("   ") else (HEADING + l if l[:1].strip() else l) for l in lines]
    raw = reflow(lines, indent=1)
    # Drop tables (box drawing) and the tables of contents / glossary indexes:
    # runs of 3 or more one-line blocks that are short and are not sentences.
    box = re.compile(r"[\u2500-\u257f]")
    def listish(b):
        return (len(b) == 1 and len(b[0]) <= 60 and not b[0].startswith((":", HEADING))
                and not re.search(r"[.!?:;,)\]\"”]$", b[0]))
    keep = [not any(box.search(l) for l in b) for b in raw]
    i = 0
    while i < len(raw):
        j = i
        while j < len(raw) and listish(raw[j]):
            j += 1
        if j - i >= 3:
            for k in range(i, j):
                keep[k] = False
        i = max(j, i + 1)
    blocks = []
    for b, k in zip(raw, keep):
        if not k:
            continue
        out = []
        for l in b:
            l = l.replace(HEADING, "")
            l = re.sub(r"\{([^{}]*)\}", r"\1", l)  # {cross-reference}
            m = re.match(r"^:(.+?):\s*(.*)$", l)  # :headword: /pronunciation/, n.
            if m:
                rest = re.sub(r"^//", "", m.group(2)).strip()
                l = m.group(1) + ("" if not rest or rest.startswith(",") else " ") + rest
            out.append(l)
        blocks.append(out)
    return blocks


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def src_fortune_poems(pkg: Package, name: str):
    text = pkg.path(f"/usr/share/games/fortunes/{name}").read_text(encoding="utf-8")
    blocks = []
    for entry in re.split(r"\n%\n", text):
        entry = _ANSI.sub("", entry).replace("%", "").strip("\n")
        lines = [l.strip() for l in entry.split("\n")]
        # One block per poem: title, author, then the lines (empty lines and
        # section numbers of the original layout become plain line breaks).
        lines = [l for l in lines if l]
        if lines:
            blocks.append(lines)
    return blocks


# Processing order (= deduplication priority), output file, reader, metadata.
# licence_quote must occur in the package's copyright file (checked).
SOURCES = [
    dict(file="web-bible", package="sword-text-web", lang="en",
         title="World English Bible with Deuterocanon (SWORD module engWEB2015eb)",
         upstream="https://ebible.org/web/", licence="public-domain",
         licence_quote="The World English Bible is in the Public Domain. That means that it is not copyrighted.",
         read=lambda p: src_sword(p, "/usr/share/sword/modules/texts/ztext/engWEB2015eb")),
    *[dict(file=f, package="r-cran-janeaustenr", lang="en", title=f"Jane Austen, {t}",
           upstream="https://cran.r-project.org/package=janeaustenr (text from Project Gutenberg)",
           licence="public-domain text; package MIT",
           licence_quote="License: MIT",
           read=lambda p, o=o: src_austen(p, o))
      for o, (f, t, _) in AUSTEN.items()],
    dict(file="melville-moby-dick", package="r-cran-tokenizers", lang="en",
         title="Herman Melville, Moby Dick; or The Whale (data set 'mobydick')",
         upstream="https://cran.r-project.org/package=tokenizers (text from Project Gutenberg #2701)",
         licence="public-domain text; package MIT",
         licence_quote="License: MIT",
         read=src_moby),
    dict(file="bierce-devils-dictionary", package="dict-devil", lang="en",
         title="Ambrose Bierce, The Devil's Dictionary (1911)",
         upstream="http://wiretap.area.com/Gopher/Library/Classic/devils.txt",
         licence="public-domain",
         licence_quote="The Devil's Dictionary is in the public domain, its copyright has expired.",
         read=src_devil),
    dict(file="jargon-file", package="jargon-text", lang="en",
         title="The Jargon File 4.4.7 (Eric S. Raymond, ed.)",
         upstream="http://www.catb.org/~esr/jargon/",
         licence="public-domain",
         licence_quote="This document (the Jargon File) is in the public domain, to be freely used, shared, and modified.",
         read=src_jargon),
    dict(file="mhcc-commentary", package="sword-comm-mhcc", lang="en",
         title="Matthew Henry's Concise Commentary on the Whole Bible (SWORD module MHCC)",
         upstream="https://gitlab.com/crosswire-bible-society/mhcc",
         licence="public-domain", licence_quote="Public Domain--Copy Freely.",
         read=lambda p: src_sword(p, "/usr/share/sword/modules/comments/zcom/mhcc")),
    dict(file="spurgeon-treasury-of-david", package="sword-comm-tdavid", lang="en",
         title="C. H. Spurgeon, The Treasury of David (SWORD module TDavid)",
         upstream="https://gitlab.com/crosswire-bible-society/tdavid",
         licence="public-domain",
         licence_quote="This work's final volume was released in 1885. It is now in the public domain.",
         read=lambda p: src_sword(p, "/usr/share/sword/modules/comments/zcom/tdavid")),
]

# Opt-in (--with-fortunes-zh): classical Chinese poems. The poems are
# centuries old, but Debian's copyright file puts the whole package under
# GPL-3.0+, so they are not part of the default corpus.
SOURCES_ZH = [
    dict(file="zh-tang300", package="fortunes-zh", lang="zh",
         title="唐诗三百首 (Three Hundred Tang Poems), from fortunes-zh",
         upstream="https://salsa.debian.org/chinese-team/fortunes-zh",
         licence="GPL-3.0+ (Debian package); poems of the Tang dynasty",
         licence_quote="License: GPL-3.0+",
         read=lambda p: src_fortune_poems(p, "tang300")),
    dict(file="zh-song100", package="fortunes-zh", lang="zh",
         title="宋诗一百首 (one hundred poems of the Song dynasty), from fortunes-zh",
         upstream="https://salsa.debian.org/chinese-team/fortunes-zh",
         licence="GPL-3.0+ (Debian package); poems of the Song dynasty",
         licence_quote="License: GPL-3.0+",
         read=lambda p: src_fortune_poems(p, "song100")),
]


# ------------------------------------------------------------ normalising --

_SPACES = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_DROP = re.compile(r"[\u0000-\u0008\u000b-\u001f\u007f\u200b\u200e\u200f\ufeff]")


def normalise_line(line: str) -> str:
    line = unicodedata.normalize("NFC", line)
    line = _DROP.sub("", line)
    line = _SPACES.sub(" ", line)
    return line.strip()


def dedup_key(block: list[str]) -> str:
    return " ".join(" ".join(block).split())


def words(text: str, lang: str) -> int:
    if lang == "zh":  # no spaces in Chinese: count Han characters
        return sum(1 for c in text if "\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf")
    return len(text.split())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, type=Path, help="folder with one unpacked package per subfolder")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--with-fortunes-zh", action="store_true",
                    help="also write the classical Chinese poems of fortunes-zh (GPL-3.0+ package)")
    args = ap.parse_args(argv)

    sources = SOURCES + (SOURCES_ZH if args.with_fortunes_zh else [])
    packages: dict[str, Package] = {}
    seen: set[str] = set()
    files = []
    args.out.mkdir(parents=True, exist_ok=True)
    for src in sources:
        name = src["package"]
        pkg = packages.get(name) or packages.setdefault(name, Package(args.root, name))
        pkg.check_licence(src["licence_quote"])
        blocks = src["read"](pkg)
        kept, dropped_dups = [], 0
        for block in blocks:
            block = [l for l in (normalise_line(l) for l in block) if l]
            if not block:
                continue
            key = dedup_key(block)
            if len(key) >= DEDUP_MIN_CHARS:
                if key in seen:
                    dropped_dups += 1
                    continue
                seen.add(key)
            kept.append("\n".join(block))
        if not kept:
            raise SourceError(f"{src['file']}: no text extracted")
        text = "\n\n".join(kept) + "\n"
        data = text.encode("utf-8")
        path = args.out / f"{src['file']}.txt"
        tmp = path.with_suffix(".txt.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        files.append({
            "file": path.name,
            "title": src["title"],
            "language": src["lang"],
            "package": name,
            "version": pkg.version,
            "upstream": src["upstream"],
            "licence": src["licence"],
            "licence_statement": src["licence_quote"],
            "copyright_file": pkg.copyright_path,
            "bytes": len(data),
            "lines": text.count("\n"),
            "paragraphs": len(kept),
            "words": words(text, src["lang"]),
            "duplicate_paragraphs_dropped": dropped_dups,
            "sha256": hashlib.sha256(data).hexdigest(),
        })
        print(f"  {path.name:40s} {len(data):>10,d} bytes  {files[-1]['words']:>9,d} words"
              f"  ({dropped_dups} duplicate paragraphs dropped)", file=sys.stderr)

    # Remove texts of an earlier run that this run did not write (for example
    # the Chinese files after a run without --with-fortunes-zh).
    manifest_path = args.out / "MANIFEST.json"
    written = {f["file"] for f in files}
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
            for f in old.get("files", []):
                name = f.get("file", "")
                if name not in written and re.fullmatch(r"[\w.-]+\.txt", name):
                    (args.out / name).unlink(missing_ok=True)
        except (ValueError, OSError):
            pass
    manifest = {
        "description": "Open training corpus of whale-mini; see docs/corpus.md",
        "generator": "scripts/extract_corpus.py",
        "extractor_version": EXTRACTOR_VERSION,
        "dedup_min_chars": DEDUP_MIN_CHARS,
        "total_bytes": sum(f["bytes"] for f in files),
        "total_words": {lang: sum(f["words"] for f in files if f["language"] == lang)
                        for lang in sorted({f["language"] for f in files})},
        "files": files,
    }
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, manifest_path)
    print(f"  total {manifest['total_bytes']:,d} bytes in {len(files)} files -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SourceError as e:
        print(f"extract_corpus: {e}", file=sys.stderr)
        sys.exit(1)
