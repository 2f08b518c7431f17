"""The outline: material cut into units (future lessons) and units grouped into modules.

Headings give the structure where present: each section becomes a unit, and the top headings
of a document group units into modules. Long sections are cut at paragraph boundaries, tiny ones
are merged into a neighbour. Modules are contiguous runs of units: groups are merged (smallest
neighbouring pair first) or split (largest module, at its most balanced point) until the count
is right. Everything is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .text import Document, count_words, split_sentences

#: a unit smaller than this is merged into a neighbour
MIN_UNIT_WORDS = 40
#: automatic module count bounds
AUTO_MAX_MODULES = 8
MAX_LESSONS_PER_MODULE = 8


@dataclass
class Unit:
    """Material for one lesson."""

    source: int
    source_title: str
    #: (source, top heading): units of one group prefer to stay in one module
    group: tuple[int, str | None]
    #: the heading, or None when the title is to be derived from the unit's key terms
    title: str | None
    #: for a part of a long section: the section's heading, to prefix a derived title
    title_base: str | None
    paragraphs: list[str]
    words: int = 0

    def __post_init__(self) -> None:
        self.words = sum(count_words(p) for p in self.paragraphs)


@dataclass
class ModulePlan:
    units: list[Unit] = field(default_factory=list)

    @property
    def words(self) -> int:
        return sum(unit.words for unit in self.units)

    @property
    def group_headings(self) -> list[str]:
        headings: dict[str, None] = {}
        for unit in self.units:
            if unit.group[1] is not None:
                headings.setdefault(unit.group[1], None)
        return list(headings)


def target_unit_words(total_words: int) -> int:
    """About how long a lesson should be: short material makes short lessons, and very long
    material makes longer ones so that the course stays within its module and lesson caps."""
    return max(150, total_words // 60)


def build_units(documents: list[Document], total_words: int) -> list[Unit]:
    target = target_unit_words(total_words)
    units: list[Unit] = []
    several = len(documents) > 1
    for doc in documents:
        doc_units: list[Unit] = []
        for section in doc.sections:
            if section.path:
                title: str | None = section.path[-1]
                group_heading: str | None = section.path[0]
            elif doc.has_headings:
                title, group_heading = "Introduction", None
            else:
                title, group_heading = None, (doc.title if several else None)
            group = (doc.index, group_heading)
            unit = Unit(doc.index, doc.title, group, title, None, list(section.paragraphs))
            doc_units.extend(_cut(unit, target))
        units.extend(_merge_tiny(doc_units))
    return units


def _cut(unit: Unit, target: int) -> list[Unit]:
    """A unit longer than twice the target, cut at paragraph (or sentence) boundaries."""
    if unit.words <= 2 * target:
        return [unit]
    pieces: list[str] = []
    for paragraph in unit.paragraphs:
        if count_words(paragraph) > 2 * target:
            pieces.extend(_sentence_chunks(paragraph, target))
        else:
            pieces.append(paragraph)
    chunks: list[list[str]] = [[]]
    size = 0
    for piece in pieces:
        words = count_words(piece)
        if size >= target or (size > 0 and size + words > target * 1.3):
            chunks.append([])
            size = 0
        chunks[-1].append(piece)
        size += words
    if len(chunks) > 1 and sum(count_words(p) for p in chunks[-1]) < target // 2:
        chunks[-2].extend(chunks.pop())
    out = []
    for number, paragraphs in enumerate(chunks):
        title = unit.title if number == 0 else None
        out.append(Unit(unit.source, unit.source_title, unit.group, title, unit.title, paragraphs))
    return out


def _sentence_chunks(paragraph: str, target: int) -> list[str]:
    chunks: list[list[str]] = [[]]
    size = 0
    for sentence in split_sentences(paragraph):
        if size >= target:
            chunks.append([])
            size = 0
        chunks[-1].append(sentence)
        size += count_words(sentence)
    return [" ".join(chunk) for chunk in chunks if chunk]


def _merge_tiny(units: list[Unit]) -> list[Unit]:
    """Units under MIN_UNIT_WORDS join the next unit of the document (the last one joins the
    previous)."""
    out: list[Unit] = []
    carry: list[str] = []
    carry_title: str | None = None
    for unit in units:
        if carry:
            unit.paragraphs = carry + unit.paragraphs
            unit.words = sum(count_words(p) for p in unit.paragraphs)
            if unit.title is None:
                unit.title = carry_title
            carry, carry_title = [], None
        if unit.words < MIN_UNIT_WORDS:
            carry, carry_title = unit.paragraphs, unit.title
            continue
        out.append(unit)
    if carry:
        if out:
            out[-1].paragraphs.extend(carry)
            out[-1].words = sum(count_words(p) for p in out[-1].paragraphs)
        else:  # the whole document is tiny: keep it as it is
            out.append(units[-1])
    return out


def plan_modules(units: list[Unit], requested: int | None, total_words: int) -> list[ModulePlan]:
    """Group units into modules: as many as requested (or an automatic count) where the
    material allows."""
    groups: list[ModulePlan] = []
    for unit in units:
        if groups and groups[-1].units[-1].group == unit.group:
            groups[-1].units.append(unit)
        else:
            groups.append(ModulePlan([unit]))
    if requested is not None:
        wanted = requested
    elif len(groups) >= 2:
        wanted = min(len(groups), max(2, round(total_words / 200)), AUTO_MAX_MODULES)
    else:
        wanted = min(max(1, round(total_words / 350)), AUTO_MAX_MODULES)
    modules = groups
    while len(modules) > wanted:
        i = min(range(len(modules) - 1), key=lambda j: (modules[j].words + modules[j + 1].words, j))
        modules[i : i + 2] = [ModulePlan(modules[i].units + modules[i + 1].units)]
    while len(modules) < wanted:
        splittable = [j for j, m in enumerate(modules) if len(m.units) >= 2]
        if not splittable:
            break
        i = max(splittable, key=lambda j: (modules[j].words, -j))
        modules[i : i + 1] = list(_split(modules[i]))
    for module in modules:
        _cap_lessons(module)
    return modules


def _split(module: ModulePlan) -> tuple[ModulePlan, ModulePlan]:
    total = module.words
    best, best_gap = 1, total
    running = 0
    for cut in range(1, len(module.units)):
        running += module.units[cut - 1].words
        gap = abs(total - 2 * running)
        if gap < best_gap:
            best, best_gap = cut, gap
    return ModulePlan(module.units[:best]), ModulePlan(module.units[best:])


def _cap_lessons(module: ModulePlan) -> None:
    units = module.units
    while len(units) > MAX_LESSONS_PER_MODULE:
        i = min(range(len(units) - 1), key=lambda j: (units[j].words + units[j + 1].words, j))
        first, second = units[i], units[i + 1]
        title = first.title
        if first.title and second.title and len(first.title) + len(second.title) < 70:
            title = f"{first.title} and {second.title}"
        merged = Unit(
            first.source,
            first.source_title,
            first.group,
            title,
            first.title_base,
            first.paragraphs + second.paragraphs,
        )
        units[i : i + 2] = [merged]
