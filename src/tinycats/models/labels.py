"""Class labels of a trained model: a display name per class, and a breed chosen by name."""

from collections.abc import Sequence

from tinycats.errors import TinyCatsError


class UnknownBreed(TinyCatsError):
    """A breed the model was not trained on; the message lists the ones it knows."""


def display_labels(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """A display name per class: the class names, or their indices when there are none."""
    return list(class_names or map(str, range(num_classes)))


def chosen_breeds(breed: str, labels: Sequence[str]) -> list[str]:
    """Every label for ``all``, else the one named (case and spaces vs underscores don't matter)."""
    wanted = breed.replace(" ", "_").lower()
    if wanted == "all":
        return list(labels)
    found = [label for label in labels if label.lower() == wanted]
    if not found:
        raise UnknownBreed(f"Unknown breed {breed!r}. This model knows: all, {', '.join(labels)}.")
    return found
