"""Style groups against the demo's six rendering media, and content groups likewise.

    python -m benchmarks.style --project DIR/artminer.duckdb

On a demo project after discovery (its content map is stored): style descriptors of
every image (engine/style.py), UMAP + HDBSCAN style groups, and the adjusted Rand index
(scikit-learn) of those groups against each image's medium (the metadata column). The
same ARI for the content map's HDBSCAN groups, which should be low: content and style
are different questions. HDBSCAN noise (-1) counts as one group, as the map shows it.
Also printed: the ARI of k-means with k = 6 on the style descriptors (an upper bound
that is told the number of media).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from db.store import Store
from engine.backbone import create_backbone
from engine.embed import density_groups, map_2d
from engine.style import StyleConfig
from hitl.style_map import style_descriptors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--model", default="effnet-lite0")
    args = parser.parse_args(argv)
    store = Store(args.project)
    images = {im.image_id: im for im in store.list_images()}
    content = {p.item_id: p.group for p in store.load_map(args.model, "image")}
    store.close()
    backbone = create_backbone(args.model)
    start = time.perf_counter()
    ids, descriptors = style_descriptors(backbone, [(i, im.path) for i, im in images.items()], StyleConfig(),
                                         progress=False)
    seconds = time.perf_counter() - start
    media = [images[i].medium for i in ids]
    groups = density_groups(map_2d(descriptors))
    kmeans = KMeans(n_clusters=len(set(media)), n_init=10, random_state=0).fit_predict(descriptors)
    print(f"{len(ids)} images, {len(set(media))} media; style statistics {1000 * seconds / len(ids):.0f} ms per image")
    print(f"style map  : {len(set(groups) - {-1})} HDBSCAN groups ({np.mean(groups == -1):.0%} noise), "
          f"ARI vs medium {adjusted_rand_score(media, groups):.3f}; k-means(k={len(set(media))}) "
          f"ARI {adjusted_rand_score(media, kmeans):.3f}")
    _crosstab("style groups", groups, media)
    if content:
        labels = [content.get(i, -1) for i in ids]
        print(f"content map: {len(set(labels) - {-1})} HDBSCAN groups, ARI vs medium "
              f"{adjusted_rand_score(media, labels):.3f}")
        _crosstab("content groups", labels, media)


def _crosstab(title: str, groups, media: list[str]) -> None:
    """Images per (group, medium): which media a group gathers."""
    print(f"  {title}:")
    for g in sorted(set(groups)):
        counts = Counter(m for m, h in zip(media, groups) if h == g)
        print(f"    {g:>3}: " + ", ".join(f"{m} {n}" for m, n in counts.most_common()))


if __name__ == "__main__":
    main()
