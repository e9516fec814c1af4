"""Mean ablation from a full pass that kept every image's gates and activations (the app's Remove toggle): the
calibration gates are read from the full pass and the ablated pass replays the tail, so nothing is decoded or sent
through the head again, and the metrics equal those of the passes computed from the files."""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from conftest import EMBEDDED_MISSING, embedded_model_ready, requires

from senet_viz.analysis import ablation
from senet_viz.analysis.tail_pass import calibration_rows
from senet_viz.data.folders import folder_source
from senet_viz.gates.blocks import select_blocks
from senet_viz.inference.precision import ForwardCounter
from senet_viz.inference.run import RunOptions, run_model

EMBEDDED = "se_resnet_fmnist"


@pytest.fixture(scope="module")
def embedded():
    from senet_viz.models import zoo

    return zoo.load_model(EMBEDDED, device="cpu")


@requires(embedded_model_ready(EMBEDDED), EMBEDDED_MISSING)
@pytest.mark.slow
def test_mean_ablation_reads_its_calibration_gates_from_the_full_pass(embedded, tmp_path):
    from senet_viz.models import registry

    source = folder_source(registry.get_spec(EMBEDDED).samples_dir, embedded.class_names)
    taken: Counter = Counter()
    folder = tmp_path / "images"
    for it in source.items:
        taken.update([it.label])
        if taken[it.label] <= 4:
            (folder / it.path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(it.path, folder / it.path.parent.name / it.path.name)
    images = folder_source(folder, embedded.class_names)
    calib, _ = ablation.split_calibration(images)
    assert 0 < len(calib.items) < len(images.items)
    stage5 = select_blocks(embedded.blocks, "stage:5")
    reference = ablation.evaluate(embedded, images, stage5, "mean", replay=False)
    full = run_model(embedded, images, options=RunOptions(batch_size=8, keep_cuts=True))

    rows = calibration_rows(full, calib, stage5)
    assert rows is not None and rows.keys == [it.key for it in calib.items]
    for b in stage5:  # exactly the calibration pass's gates
        np.testing.assert_array_equal(rows.gates[b.name], full.gates[b.name][[full.keys.index(k) for k in rows.keys]])
    assert calibration_rows(replace(full, gates={}), calib, stage5) is None  # a large run keeps no gates
    assert calibration_rows(full, replace(calib, items=calib.items[:1] + [replace(calib.items[0], key="other")]),
                            stage5) is None  # an image the full pass did not see

    shutil.rmtree(folder)  # nothing may be read again
    counter = ForwardCounter()
    out = ablation.evaluate(embedded, images, stage5, "mean", full=full, counter=counter)
    assert out.replay.endswith("from the full pass's kept activations")
    assert (out.top1, out.top5, out.full_top1, out.agreement, out.n_images, out.n_calibration) == \
        (reference.top1, reference.top5, reference.full_top1, reference.agreement, reference.n_images,
         reference.n_calibration)
    assert out.kl == pytest.approx(reference.kl, rel=1e-5, abs=1e-9) and out.n_skipped == 0
    assert counter.count == out.n_images  # only the tails of the evaluated images went through the network
