"""Building a store over a long job that may be killed at any moment.

Images go into small part stores in ``OUTPUT.parts/``; each part is written
by a FeatureStoreWriter, so it exists only once complete (renamed into
place). A killed job loses at most the part it was filling: the rerun
discards that part's ``.partial``, skips every image of the finished parts
(and of an existing OUTPUT) and goes on. When the job is done the parts
(and the old OUTPUT) are merged into a new OUTPUT, which again appears only
when complete; then the parts are removed. A kill between the two leaves
parts whose images are all in OUTPUT: the rerun recognises and removes them.
So every image is in the result exactly once, whenever the kills come."""

import logging
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Set

from ..data.feature_store import (
    FeatureStore,
    FeatureStoreError,
    FeatureStoreWriter,
    RegionFeatures,
    merge_stores,
    partial_path,
)

logger = logging.getLogger(__name__)

PART_GLOB = "part-*.h5"
# how the layout settings are called in messages, and the options that set them
_LAYOUT_WORDS = {
    "num_regions": ("region slots", "--max-regions"),
    "dtype": ("dtype", "--dtype"),
    "num_classes": ("classes", "--num-classes"),
}


def parts_dir(output) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".parts")


class ResumableStoreBuilder:
    """``add`` images, ``commit`` now and then (or let it happen every
    ``part_images`` images / ``part_seconds`` seconds), ``finish`` at the
    end. ``done`` holds every image already in OUTPUT or a finished part."""

    def __init__(
        self,
        output,
        num_regions: int,
        feature_dim: Optional[int] = None,
        dtype: str = "float16",
        num_classes: int = 601,
        attrs: Optional[Dict[str, str]] = None,
        part_images: int = 256,
        part_seconds: float = 60.0,
    ):
        self.output = Path(output)
        self.parts = parts_dir(self.output)
        self.layout = dict(num_regions=num_regions, dtype=dtype, num_classes=num_classes)
        self.feature_dim = feature_dim
        self.attrs = dict(attrs or {})
        self.part_images, self.part_seconds = part_images, part_seconds
        self._writer: Optional[FeatureStoreWriter] = None
        self._started = 0.0
        self.done: Set[str] = set()
        self.existing: Optional[FeatureStore] = None
        if self.output.exists():
            self.existing = FeatureStore(self.output, validate="none")
            self.done.update(self.existing.names)
            self._check_layout(self.existing)
        self._next_part = 0
        self._recover_parts()

    # -- what an earlier run left --
    def _check_layout(self, store: FeatureStore) -> None:
        have = dict(num_regions=store.stored_regions, dtype=str(store.dtype), num_classes=store.num_classes)
        for key, value in self.layout.items():
            if have[key] != value:
                what, option = _LAYOUT_WORDS[key]
                raise FeatureStoreError(
                    f"{store.path}: the existing store has {what} {have[key]}, this run asks for {value}; "
                    f"pass {option} {have[key]} to resume it, or another --output"
                )
        if self.feature_dim is not None and store.feature_dim != self.feature_dim:
            raise FeatureStoreError(
                f"{store.path}: holds {store.feature_dim}-dim features, this run gives {self.feature_dim}"
            )
        self.feature_dim = store.feature_dim

    def part_paths(self) -> List[Path]:
        return sorted(self.parts.glob(PART_GLOB)) if self.parts.is_dir() else []

    def _recover_parts(self) -> None:
        if not self.parts.is_dir():
            return
        for stale in self.parts.glob("*.partial"):
            logger.info("%s: discarding the unfinished part of an interrupted run", stale)
            stale.unlink()
        in_output = set(self.existing.names) if self.existing is not None else set()
        for path in self.part_paths():
            part = FeatureStore(path, validate="none")
            names = set(part.names)
            if self.existing is not None and names <= in_output:
                # merged into OUTPUT by a run killed before it removed its parts
                path.unlink()
                continue
            overlap = names & self.done
            if overlap:
                raise FeatureStoreError(
                    f"{path}: image '{sorted(overlap)[0]}' is also in {self.output} or another part "
                    f"({len(overlap)} images); the parts folder was changed by hand?"
                )
            self._check_layout(part)
            self.done.update(names)
            self._next_part = max(self._next_part, int(path.stem.split("-")[1]) + 1)
        if self.done:
            logger.info(
                "%s: resuming: %d images done (%d parts)", self.output, len(self.done), len(self.part_paths())
            )

    # -- writing --
    def __contains__(self, name: str) -> bool:
        return name in self.done or (self._writer is not None and name in self._writer)

    def add(self, name: str, regions: RegionFeatures) -> None:
        if name in self.done:
            raise FeatureStoreError(f"{self.output}: image '{name}' is already in the store")
        if self._writer is None:
            if self.feature_dim is None:
                self.feature_dim = regions.features.shape[1]
            self.parts.mkdir(parents=True, exist_ok=True)
            self._writer = FeatureStoreWriter(
                self.parts / f"part-{self._next_part:06d}.h5",
                feature_dim=self.feature_dim,
                attrs=self.attrs,
                **self.layout,
            )
            self._next_part += 1
            self._started = time.monotonic()
        self._writer.add(name, regions)
        full = len(self._writer) >= self.part_images
        if full or time.monotonic() - self._started >= self.part_seconds:
            self.commit()

    def commit(self) -> None:
        """Makes every image added so far durable."""
        if self._writer is None:
            return
        self.done.update(self._writer.names)
        self._writer.close()
        self._writer = None

    def abort(self) -> None:
        """Drops the images since the last commit (an interrupted run)."""
        if self._writer is not None:
            self._writer.abort()
            self._writer = None

    def finish(self) -> int:
        """Merges OUTPUT and the parts into OUTPUT; returns its image count."""
        self.commit()
        parts = self.part_paths()
        if not parts:
            if self.existing is None:
                if self.feature_dim is None:
                    raise FeatureStoreError(f"{self.output}: no image was extracted, so no store was written")
                with FeatureStoreWriter(self.output, feature_dim=self.feature_dim, attrs=self.attrs, **self.layout):
                    pass
            # a run killed after its merge replaced OUTPUT left the parts folder,
            # whose parts _recover_parts found in OUTPUT and removed
            if self.parts.is_dir():
                shutil.rmtree(self.parts)
            return 0 if self.existing is None else len(self.existing)
        inputs = ([self.output] if self.existing is not None else []) + parts
        merged = self.output.with_name(self.output.name + ".merged")
        partial_path(merged).unlink(missing_ok=True)
        count = merge_stores(inputs, merged, force=True, attrs=self.attrs)
        merged.replace(self.output)  # atomic: OUTPUT is the old store or the new one
        if self.existing is not None:
            self.existing.close()
        self.existing = FeatureStore(self.output, validate="none")
        shutil.rmtree(self.parts)
        return count
