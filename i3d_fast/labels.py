"""Class names: the 400 Kinetics-400 action classes shipped with the package (DeepMind's label order,
alphabetical), or one name per line from a file."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import List, Optional, Union

KINETICS400 = "kinetics400_labels.txt"


def _parse(text: str, source: str) -> List[str]:
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise ValueError(f"{source}: no class names (expected one name per line)")
    blank = [i + 1 for i, name in enumerate(names) if not name]
    if blank:
        raise ValueError(f"{source}: blank class name on line(s) {blank[:5]}")
    return names


def kinetics400() -> List[str]:
    """The 400 Kinetics-400 class names in the order of the models' logits (index 227: "playing cricket")."""
    text = resources.files(__package__).joinpath("data", KINETICS400).read_text(encoding="utf-8")
    return _parse(text, KINETICS400)


def read_labels(path: Union[str, Path]) -> List[str]:
    """Class names from a text file, one per line in logit order (trailing blank lines ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the labels file ({exc})") from exc
    return _parse(text, str(path))


def labels_for(num_classes: int, path: Optional[Union[str, Path]] = None) -> List[str]:
    """Names for ``num_classes`` logits: from ``path`` when given (its length must match), the Kinetics-400
    names for a 400-class model, else "class <index>"."""
    if path is not None:
        names = read_labels(path)
        if len(names) != num_classes:
            raise ValueError(f"{path}: {len(names)} class names, but the model has {num_classes} classes")
        return names
    if num_classes == 400:
        return kinetics400()
    return [f"class {i}" for i in range(num_classes)]
