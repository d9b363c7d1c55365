"""Class labels of the models and the breed lookup that `sample` and `serve` share."""

import pytest

from tinycats.models import CatClassifier, DiTGenerator
from tinycats.models.labels import UnknownBreed, chosen_breeds, display_labels

from helpers.dit import TINY_DIT, TINY_SIZE

BREEDS = ["Bengal", "Maine_Coon", "Sphynx"]


def test_a_model_without_class_names_labels_its_classes_by_index():
    assert display_labels(None, 3) == ["0", "1", "2"]
    assert CatClassifier(num_classes=2).class_labels == ["0", "1"]
    named = DiTGenerator(**TINY_DIT, image_size=TINY_SIZE, num_classes=3, class_names=BREEDS)
    assert named.class_labels == BREEDS


@pytest.mark.parametrize(
    ("breed", "chosen"),
    [("all", BREEDS), ("ALL", BREEDS), ("maine coon", ["Maine_Coon"]), ("SPHYNX", ["Sphynx"])],
)
def test_a_breed_is_found_whatever_its_case_and_spaces(breed: str, chosen: list[str]):
    assert chosen_breeds(breed, BREEDS) == chosen


def test_an_unknown_breed_names_the_known_ones():
    with pytest.raises(
        UnknownBreed, match=r"Unknown breed 'Tabby'\. This model knows: all, Bengal"
    ):
        chosen_breeds("Tabby", BREEDS)
