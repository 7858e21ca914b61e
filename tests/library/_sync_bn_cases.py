"""The synchronized-BN case list, shared by tests/library/_sync_bn_worker.py and tests/library/test_sync_bn.py.

Kept free of JAX: the test process must not import JAX with the worker's 4 forced devices (the worker is a separate
process for exactly that reason), yet it needs the names to parametrize its tests.
"""

MODES = ("shard_map", "pmap", "vmap", "jit_sharded")
# name: (shape, channel axis). Per-device batch is shape[0] / 4.
LAYOUTS = {
    "nchw": ((8, 3, 4, 5), 1),
    "nhwc": ((8, 4, 5, 3), -1),
    "nc": ((16, 5), 1),
}
# Which layouts each mode runs: every rank through shard_map (the axis handling: 4-D channels-first and -last, 2-D),
# the collective path of the other modes on channels-first and -last. Each case costs compilations, and the suite has
# a time budget, so a case that another test already covers is not repeated here:
# * BN gradients under vmap(axis_name=...) (outside and inside the map): tests/library/test_transforms.py
#   (jvp, grad and hessian of synchronized BN under vmap, against a float64 reference);
# * the 3-D (N, C, L) layout: the same reduction over "all axes but the channel" as (N, C, H, W), run by the goldens;
# * momentum=None (the cumulative average 1/num_batches_tracked): applied after the statistics are combined, as on
#   one device; tests/library/test_core.py and the goldens check it;
# * check_vma=False: its forward is the checked one's; its backward (where psum's transpose differs) stays here.
TRAIN_LAYOUTS = {"shard_map": ("nchw", "nhwc", "nc"), "pmap": ("nchw", "nhwc"), "vmap": ("nchw",),
                 "jit_sharded": ("nchw", "nhwc")}
GRAD_LAYOUTS = {"shard_map": ("nchw", "nhwc"), "pmap": ("nchw",), "vmap": (), "jit_sharded": ("nchw",)}


def case_names() -> list[str]:
    """Every case the worker runs, in order."""
    names = [f"bn_train/{mode}/{lname}/momentum=0.1" for mode in MODES for lname in TRAIN_LAYOUTS[mode]]
    names += [f"bn_grad/{mode}/{lname}" for mode in MODES for lname in GRAD_LAYOUTS[mode]]
    names += [
        "bn_grad_inside/pmap/nchw",
        "bn_grad/shard_map_unchecked/nchw",
        "bn_train/pmap/per_device_batch_1",
        "control/shard_map_no_axis_name",
        "bn_jvp/shard_map/nchw",
        "masked_counts/shard_map",
        "masked_counts/jit_sharded",
        "groups/shard_map",
        "groups/pmap",
    ]
    names += [f"instance_train/{m}" for m in ("shard_map", "pmap")]
    names += ["group/shard_map_no_axis_name", "group/jit_sharded", "collectives"]
    return names
