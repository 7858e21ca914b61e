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
    "ncl": ((8, 4, 6), 1),
}
# Which layouts each mode runs: every layout through shard_map (the axis handling), the collective path of the other
# modes on channels-first and -last. Each case costs compilations, and the suite has a time budget.
TRAIN_LAYOUTS = {"shard_map": tuple(LAYOUTS), "pmap": ("nchw", "nhwc"), "vmap": ("nchw",),
                 "jit_sharded": ("nchw", "nhwc")}
GRAD_LAYOUTS = {"shard_map": ("nchw", "nhwc"), "pmap": ("nchw",), "vmap": ("nchw",), "jit_sharded": ("nchw",)}


def case_names() -> list[str]:
    """Every case the worker runs, in order."""
    names = [f"bn_train/{mode}/{lname}/momentum=0.1" for mode in MODES for lname in TRAIN_LAYOUTS[mode]]
    names.append("bn_train/shard_map/nchw/momentum=None")  # the cumulative average (1/num_batches_tracked)
    names += [f"bn_grad/{mode}/{lname}" for mode in MODES for lname in GRAD_LAYOUTS[mode]]
    names += [
        "bn_grad_inside/pmap/nchw",
        "bn_grad_inside/vmap/nchw",
        "bn_train/shard_map_unchecked/nchw/momentum=0.1",
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
