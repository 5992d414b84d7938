"""Safe reading of Detectron pickles and their tagged YAML cfg: nothing in a file runs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import yaml

from tests.training.detectron.conftest import TINY
from training.detectron.pickle_io import (
    DetectronFileError,
    cfg_array,
    load_detectron_pickle,
    read_cfg,
)
from training.detectron.writer import (
    Call,
    Global,
    make_blobs,
    stage2_cfg_text,
    write_detectron_pickle,
)


@pytest.mark.parametrize("protocol", [0, 2])
def test_python2_pickles_load_with_every_blob_intact(tmp_path, protocol):
    blobs = make_blobs(TINY, seed=3)
    blobs["odd_bytes"] = np.frombuffer(bytes(range(256)), np.float32).copy()  # every byte value
    backups = tuple(n for n in blobs if n.endswith("_jcvbackup"))
    path = write_detectron_pickle(
        tmp_path / "w.pkl", blobs, stage2_cfg_text(TINY), protocol=protocol, unicode_names=backups
    )
    head = path.read_bytes()[:2]
    assert (head == b"\x80\x02") == (protocol == 2)
    weights = load_detectron_pickle(path)
    assert weights.protocol == protocol
    assert set(weights.blobs) == set(blobs)
    for name, value in blobs.items():
        got = weights.blobs[name]
        assert got.dtype == np.float32 and got.shape == value.shape
        assert got.tobytes() == value.tobytes(), name
    assert weights.cfg_text == stage2_cfg_text(TINY)


def _payload_file(tmp_path, call: Call, protocol: int):
    blobs = {"conv1_w": np.zeros((2, 3, 1, 1), np.float32), "evil": call}
    return write_detectron_pickle(tmp_path / "evil.pkl", blobs, None, protocol=protocol)


@pytest.mark.parametrize("protocol", [0, 2])
@pytest.mark.parametrize(
    ("module", "name", "args"),
    [
        ("os", "system", lambda m: (f"touch {m}".encode(),)),
        ("posix", "system", lambda m: (f"touch {m}".encode(),)),
        ("numpy.testing._private.utils", "runstring",
         lambda m: (f"open({str(m)!r}, 'w').close()".encode(), {})),
    ],
)  # fmt: skip
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(
    tmp_path, protocol, module, name, args
):
    marker = tmp_path / "ran"
    path = _payload_file(tmp_path, Call(Global(module, name), args(marker)), protocol)
    # The payload is live: an ordinary unpickler runs it.
    pickle.loads(path.read_bytes(), encoding="latin1")
    assert marker.exists()
    marker.unlink()
    with pytest.raises(DetectronFileError, match=rf"asks for {module}\.{name}\b.*Nothing"):
        load_detectron_pickle(path)
    assert not marker.exists()


def test_not_a_blob_dict_is_refused_naming_the_blob(tmp_path):
    path = write_detectron_pickle(tmp_path / "w.pkl", {"conv1_w": (1, 2)}, None)
    with pytest.raises(DetectronFileError, match="blob 'conv1_w' should be a numeric array"):
        load_detectron_pickle(path)
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(DetectronFileError, match="not a readable Detectron weights pickle"):
        load_detectron_pickle(tmp_path / "junk.pkl")
    with pytest.raises(DetectronFileError, match="does not exist"):
        load_detectron_pickle(tmp_path / "absent.pkl")


def test_the_tagged_cfg_is_read_as_plain_data_that_safe_load_refuses():
    text = stage2_cfg_text(TINY)
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml.safe_load(text)
    cfg = read_cfg(text)
    assert cfg["MODEL"]["NUM_CLASSES"] == 81
    assert cfg["MODEL"]["CONV_BODY"] == "FPN.add_fpn_ResNet50_conv5_body"
    assert cfg["MRCNN"]["BBOX2MASK"]["TYPE"] == "2_layer"
    assert cfg["FPN"]["RPN_ASPECT_RATIOS"] == [0.5, 1, 2]
    means = cfg_array(cfg["PIXEL_MEANS"])
    assert means.shape == (1, 1, 3)
    np.testing.assert_array_equal(means.ravel(), [102.9801, 115.9465, 122.7717])


def test_the_cfg_reader_builds_no_object(tmp_path):
    marker = tmp_path / "ran"
    text = (
        f"A: !!python/object/apply:os.system ['touch {marker}']\n"
        "B: !!python/object/new:collections.OrderedDict {dictitems: {x: 1}}\n"
        "C: !!python/name:os.system ''\n"
    )
    cfg = read_cfg(text)
    assert not marker.exists()
    assert cfg == {"A": [f"touch {marker}"], "B": {"x": 1}, "C": ""}
    with pytest.raises(ValueError, match="should be a mapping"):
        read_cfg("- 1\n- 2\n")
