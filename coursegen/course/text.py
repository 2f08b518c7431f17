"""Reading source material: markdown, reStructuredText-style or plain text -> sections ->
paragraphs -> sentences -> tokens.

Pure functions over strings; no I/O. Headings give the structure when the text has them:
ATX markdown (``## Title``), setext markdown and reST (a title underlined, or over- and
underlined, with ``=``, ``-``, ``~``, ``*``, ...). Code blocks, doctest lines, tables and
footnote blocks are not prose and are dropped; inline markup is reduced to its text.
"""

from __future__ import annotations

import functools
import html
import re
import unicodedata
from dataclasses import dataclass, field

# -- documents and sections ---------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A run of prose under one heading. ``path`` holds the headings from the top (the
    document's own title excluded); it is empty for text before the first heading."""

    source: int
    path: tuple[str, ...]
    paragraphs: tuple[str, ...]

    @functools.cached_property
    def words(self) -> int:
        return sum(count_words(p) for p in self.paragraphs)


@dataclass(frozen=True)
class Document:
    index: int
    title: str
    #: the title heading the text gave itself, when it has exactly one top heading first
    heading_title: str | None
    sections: tuple[Section, ...]
    has_headings: bool

    @property
    def words(self) -> int:
        return sum(section.words for section in self.sections)


_ATX = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
_ADORNMENT = re.compile(r"^([=\-~^*+#\"'`:.])\1{2,}\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_HR = re.compile(r"^\s*([-*_])(\s*\1){2,}\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+\u2022]|\d{1,3}[.)])\s+(.*)$")
_FOOTNOTE_BLOCK = re.compile(r"^-\[\s*.*\s*\]-\s*$")
_DOCTEST = re.compile(r"^\s*(>>>|\.\.\.)(\s|$)")
_TABLE = re.compile(r"^\s*(\||\+[-=+]+\+)")


@dataclass
class _Block:
    kind: str  # "heading" or "para"
    text: str
    level: int = 0


@dataclass
class _Parser:
    blocks: list[_Block] = field(default_factory=list)
    buffer: list[str] = field(default_factory=list)
    styles: dict[str, int] = field(default_factory=dict)  # underline style -> level

    def flush(self) -> None:
        if self.buffer:
            if _looks_like_code(self.buffer):
                self.buffer = []
                return
            text = clean_inline(" ".join(line.strip() for line in self.buffer))
            if text:
                self.blocks.append(_Block("para", text))
            self.buffer = []

    def heading(self, title: str, level: int) -> None:
        self.flush()
        title = clean_inline(title)
        if title:
            self.blocks.append(_Block("heading", title, level))

    def style_level(self, style: str) -> int:
        if style not in self.styles:
            self.styles[style] = len(self.styles) + 1
        return self.styles[style]


_CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \S+ import|return\b|print\(|@\w|#|[\w.\[\]]+\s*[-+*/]?=\s*\S"
    r"|[\w.]+\(.*\)\s*$|[{}\[\]()]+\s*$)"
)


def _looks_like_code(lines: list[str]) -> bool:
    """An indented block most of whose lines read like source code (doc examples)."""
    if not all(line.startswith(("  ", "\t")) for line in lines):
        return False
    code = sum(1 for line in lines if _CODE_LINE.match(line))
    return code * 2 >= len(lines)


# control characters (but the newline) and invisible format characters
_INVISIBLE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")


def normalize(text: str) -> str:
    """Unicode NFC, Unix newlines, no control characters, tabs as spaces."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = text.replace("\t", "    ").lstrip("\ufeff")
    return _INVISIBLE.sub("", text)


def _blocks(text: str) -> tuple[list[_Block], bool]:
    lines = normalize(text).split("\n")
    parser = _Parser()
    fence: str | None = None
    skipping_footnotes = False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        i += 1
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
            continue
        if (m := _FENCE.match(line)) is not None:
            parser.flush()
            fence = m.group(1)
            continue
        if not stripped:
            parser.flush()
            continue
        if (m := _ATX.match(line)) is not None:
            parser.heading(m.group(2), len(m.group(1)))
            skipping_footnotes = False
            continue
        # reST over- and underlined title: ====\nTitle\n====
        if _ADORNMENT.match(stripped) and nxt.strip() and i + 1 < len(lines):
            under = lines[i + 1].strip()
            if under == stripped and not parser.buffer:
                parser.heading(nxt.strip(), parser.style_level("over" + stripped[0]))
                skipping_footnotes = False
                i += 2
                continue
        # setext / reST underlined title: a single line followed by a line of one repeated mark
        if (
            not parser.buffer
            and _ADORNMENT.match(nxt.strip())
            and len(nxt.strip()) >= max(3, len(stripped) // 2)
            and not _LIST_ITEM.match(line)
            and len(stripped) <= 150
        ):
            parser.heading(stripped, parser.style_level("under" + nxt.strip()[0]))
            skipping_footnotes = False
            i += 1
            continue
        if skipping_footnotes:
            continue
        if _FOOTNOTE_BLOCK.match(stripped):
            parser.flush()
            skipping_footnotes = True
            continue
        if _HR.match(line) or _ADORNMENT.match(stripped) or _DOCTEST.match(line) or _TABLE.match(line):
            parser.flush()
            continue
        if (m := _LIST_ITEM.match(line)) is not None:
            parser.flush()
            parser.buffer.append(m.group(1))
            continue
        parser.buffer.append(line.lstrip(">") if line.lstrip().startswith(">") else line)
    parser.flush()
    return parser.blocks, bool(parser.styles) or any(b.kind == "heading" for b in parser.blocks)


def parse_document(text: str, *, index: int = 0, title: str = "") -> Document:
    """Split one source into sections along its headings."""
    blocks, _ = _blocks(text)
    headings = [b for b in blocks if b.kind == "heading"]
    heading_title: str | None = None
    if headings:
        top = min(h.level for h in headings)
        at_top = [h for h in headings if h.level == top]
        if len(at_top) == 1 and at_top[0] is headings[0]:
            heading_title = headings[0].text
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    paragraphs: list[str] = []

    def close() -> None:
        if paragraphs:
            path = tuple(t for _level, t in stack)
            if heading_title is not None and path and path[0] == heading_title and stack[0][0] == top:
                path = path[1:]
            sections.append(Section(index, path, tuple(paragraphs)))

    for block in blocks:
        if block.kind == "heading":
            close()
            paragraphs = []
            while stack and stack[-1][0] >= block.level:
                stack.pop()
            stack.append((block.level, block.text))
        else:
            paragraphs.append(block.text)
    close()
    return Document(
        index=index,
        title=title.strip() or heading_title or f"Source {index + 1}",
        heading_title=heading_title,
        sections=tuple(sections),
        has_headings=any(s.path for s in sections),
    )


# -- inline markup ------------------------------------------------------------------------

_INLINE_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"!\[[^\]]*\]\([^)]*\)"), ""),  # images
    (re.compile(r"\[([^\]]+)\]\([^)]*\)"), r"\1"),  # [text](url)
    (re.compile(r"\[([^\]]+)\]\[[^\]]*\]"), r"\1"),  # [text][ref]
    (re.compile(r"`([^`<]+?)\s*<[^>]+>`_{1,2}"), r"\1"),  # reST `text <url>`_
    (re.compile(r":[a-z:]+:`([^`]+)`"), r"\1"),  # reST roles
    (re.compile(r"``([^`]+)``"), r"\1"),
    (re.compile(r"`([^`]+)`"), r"\1"),
    (re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*"), r"\1"),
    (re.compile(r"(?<!\w)__(?=\S)(?!\w+__)(.+?)(?<=\S)__(?!\w)"), r"\1"),  # not __dunder__ names
    (re.compile(r"(?<![\w*])\*(?=\S)([^*]+?)(?<=\S)\*(?![\w*])"), r"\1"),
    (re.compile(r"(?<![\w_])_(?=\S)([^_]+?)(?<=\S)_(?![\w_])"), r"\1"),
    (re.compile(r"<[^>\n]{1,200}>"), ""),  # html tags
    (re.compile(r"\[\d{1,3}\]"), ""),  # footnote references
    (re.compile(r"https?://\S+"), ""),
)


def clean_inline(text: str) -> str:
    """Markup reduced to its text, whitespace collapsed."""
    for pattern, replacement in _INLINE_RULES:
        text = pattern.sub(replacement, text)
    text = html.unescape(text)
    return re.sub(r"\s+", " ", text).strip()


# -- sentences ----------------------------------------------------------------------------

_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs mr mrs ms dr prof st no nos fig figs approx cf al jr sr inc ltd co mt vol pp "
    "ed eds ca u.s u.k a.d b.c".split()
)
_BOUNDARY = re.compile(r"([.!?]+)([\"'\u201d\u2019)\]]*)\s+")
_OPENERS = "\"'\u201c\u2018(["


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of a paragraph, not fooled by common abbreviations, initials or decimals."""
    out: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(paragraph):
        following = paragraph[match.end() : match.end() + 1]
        if following and not (following.isupper() or following.isdigit() or following in _OPENERS):
            continue
        if match.group(1) == ".":
            last = paragraph[start : match.start(1)].rsplit(None, 1)
            word = last[-1].lower().lstrip(_OPENERS) if last else ""
            if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                continue
        sentence = paragraph[start : match.end(2)].strip()
        if sentence:
            out.append(sentence)
        start = match.end()
    tail = paragraph[start:].strip()
    if tail:
        out.append(tail)
    return out


# -- words --------------------------------------------------------------------------------

_TOKEN = re.compile(r"[^\W\d_](?:[\w'\u2019-]*[^\W_])?|\d[\w.,]*|[^\w\s]")
_WORD = re.compile(r"[^\W\d_](?:[\w'\u2019-]*[^\W_])?")


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def tokens(sentence: str) -> list[str]:
    """Words, numbers and punctuation marks, in order."""
    return _TOKEN.findall(sentence)


def is_word(token: str) -> bool:
    return token[0].isalpha()


_NO_PLURAL = frozenset(
    "species series news physics mathematics genus bus gas lens analysis basis thesis "
    "diagnosis crisis axis atlas always perhaps whereas various numerous famous previous "
    "continuous obvious glass class process success access".split()
)


@functools.lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """A light normal form: lower case, no possessive, simple plurals folded."""
    w = word.lower().replace("\u2019", "'")
    if w.endswith("'s"):
        w = w[:-2]
    w = w.strip("'-")
    if len(w) <= 3 or w in _NO_PLURAL:
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith(("sses", "shes", "ches", "xes", "zzes")):
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is", "'s")):
        return w[:-1]
    return w


@functools.lru_cache(maxsize=1 << 16)
def root(key: str) -> str:
    """A cruder normal form than :func:`stem`, only to tell related words apart from unrelated
    ones: print, printed, printing and printers share the root ``print``."""
    for suffix in ("ings", "ing", "ers", "er", "ed", "ions", "ion", "es", "s"):
        if key.endswith(suffix) and len(key) - len(suffix) >= 4:
            base = key[: -len(suffix)]
            if len(base) > 4 and base[-1] == base[-2] and base[-1] not in "aeiousl":
                base = base[:-1]  # mapping -> map(p)
            return base.rstrip("e")
    return key.rstrip("e") if len(key) > 4 else key


STOPWORDS = frozenset(
    """
    a about above across after afterwards again against all almost alone along already also although
    always am among amongst an and another any anyone anything anyway anywhere are around as at away
    back be became because become becomes becoming been before beforehand behind being below beside
    besides between beyond both but by can cannot could did do does doing done down during each
    either else elsewhere enough even ever every everyone everything everywhere except few for
    former formerly from further had has have having he hence her here hereby herein hers herself him
    himself his how however i if in indeed instead into is it its itself just last latter least less
    let like likely may me meanwhile might mine more moreover most mostly much must my myself namely
    neither never nevertheless next no nobody none nor not nothing now nowhere of off often on once
    one only onto or other others otherwise our ours ourselves out over own per perhaps quite rather
    really same several she should since so some somehow someone something sometimes somewhere still
    such than that the their theirs them themselves then thence there thereafter thereby therefore
    therein these they this those though through throughout thus to together too toward towards
    under until up upon us very via was we well were what whatever when whence whenever where
    whereas whereby wherever whether which while whither who whoever whole whom whose why will with
    within without would yet you your yours yourself yourselves
    able according actually allow allows almost ago already amount another anybody apart appear
    ask asked away became begin began begun bring brings brought call called calls came case cases
    certain certainly change changed changes clearly come comes coming consider considered contain
    contains could couldn day days describe described different do does done due easily either end
    ends especially etc even example examples fact far felt find finds first five found four full
    fully generally get gets getting give given gives giving go goes going gone good got great
    greater had half hardly has help helped helps high higher highest hold holds how however hundred
    hundreds important include included includes including keep keeps kept kind kinds know known
    knows large larger largest later lead leads least left less let lets little long longer look
    looks lot lots low made main mainly make makes making many matter mean means meant million
    millions mind moment most move moved moves much near nearly need needed needs new
    nine non none normally number numbers often old older oldest ones order others part parts past
    place places point points possible probably put rather real really reason right said same saw
    say says second see seem seemed seems seen set sets seven show showed shown shows side simply
    since single six small smaller so some soon still sure take taken takes taking tell ten tend
    term terms than thing things think third thousand thousands three time times today told took
    toward turn turned turns twice two under unless upon use used useful uses using
    usually various want way ways whole wide within word words work works worked year years yes
    yet young
    """.split()
)
