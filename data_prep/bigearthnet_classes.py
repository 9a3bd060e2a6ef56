"""BigEarthNet class nomenclatures: the 43 CORINE level-3 names and the 19-class grouping.

The 19 classes are pinned in the ORIGINAL nomenclature order of Sumbul et al. (the order of the
official ``label_indices.json``, TorchGeo and ../shared/DATA_FORMATS.md), not the alphabetical order
that bigearthnet-common and ConfigILM use; the manifest carries the names, so position is never
implied. The mapping is the official ``label_conversion`` list.
"""

from __future__ import annotations

CLASSES_43 = (
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
)

CLASSES_19 = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)

# Official label_conversion: entry i lists the 43-class indices merged into 19-class index i.
LABEL_CONVERSION = (
    (0, 1), (2,), (11, 12, 13), (14, 15, 16, 18), (17,), (19,), (20,), (21,), (22,), (23,), (24,),
    (25, 31), (26, 27), (28,), (29,), (33, 34), (35, 36), (38, 39), (40, 41, 42),
)
TO_19 = {i43: i19 for i19, group in enumerate(LABEL_CONVERSION) for i43 in group}


def indices_43(names: list[str], where: str) -> list[int]:
    """Sorted 43-class indices of CORINE level-3 names; an unknown name raises ValueError."""
    unknown = [n for n in names if n not in CLASSES_43]
    if unknown:
        raise ValueError(f"{where}: unknown BigEarthNet 43-class label(s) {unknown}")
    return sorted({CLASSES_43.index(n) for n in names})


def indices_19(names: list[str], where: str) -> list[int]:
    """Sorted 19-class indices of 19-class names (BigEarthNet v2 metadata)."""
    unknown = [n for n in names if n not in CLASSES_19]
    if unknown:
        raise ValueError(f"{where}: unknown BigEarthNet 19-class label(s) {unknown}")
    return sorted({CLASSES_19.index(n) for n in names})


def to_19(indices43: list[int]) -> list[int]:
    """19-class indices of 43-class indices (classes without a 19-class target are dropped)."""
    return sorted({TO_19[i] for i in indices43 if i in TO_19})
