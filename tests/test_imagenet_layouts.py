"""Bring-your-own-model data: labels files, the ImageNet validation layouts, and the preprocessing flags of
``build`` reaching the record that ``infer`` applies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from resnet_deploy.calibration.labels import ClassLabels, read_ground_truth, read_labels
from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.sources import open_source
from resnet_deploy.cli import main
from resnet_deploy.console import Ui
from resnet_deploy.errors import ConfigError, DataError
from resnet_deploy.pipeline.build import data_stage
from resnet_deploy.pipeline.checkpoint import load_model
from resnet_deploy.pipeline.settings import EMBEDDED_MODEL, BuildSettings

SYNSETS = ("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
           "n01484850 great white shark, white shark\n")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def images(folder: Path, names: list[str], *, size=(40, 30)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", size, (20 * i, 90, 200 - 10 * i)).save(folder / name)


class TestLabelsFiles:
    def test_synset_words_give_ids_and_names(self, tmp_path):
        labels = read_labels(write(tmp_path / "synset_words.txt", SYNSETS))
        assert labels.ids == ("n01440764", "n01443537", "n01484850")
        assert labels.names == ("tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark, white shark")
        assert labels.index("n01443537") == 1 and labels.index("2") == 2 and labels.index("3") is None

    def test_plain_names_keep_their_spaces(self, tmp_path):
        labels = read_labels(write(tmp_path / "names.txt", "great white shark\ntiger shark\n\n# comment\n"))
        assert labels.names == ("great white shark", "tiger shark") and labels.ids == ()

    @pytest.mark.parametrize("data, names, ids", [
        (["cat", "dog"], ("cat", "dog"), ()),
        ({"1": "dog", "0": "cat"}, ("cat", "dog"), ()),
        ({"0": ["n02123045", "tabby"], "1": ["n02085620", "Chihuahua"]}, ("tabby", "Chihuahua"),
         ("n02123045", "n02085620")),
    ])
    def test_json_forms(self, tmp_path, data, names, ids):
        labels = read_labels(write(tmp_path / "classes.json", json.dumps(data)))
        assert (labels.names, labels.ids) == (names, ids)

    @pytest.mark.parametrize("name, text, match", [
        ("dup.txt", "cat\ndog\ncat\n", "class name 'cat' twice"),
        ("empty.txt", "\n\n", "names no classes"),
        ("gap.json", '{"0": "a", "2": "b"}', "without gaps"),
        ("bad.json", "{nope", "not valid JSON"),
    ])
    def test_bad_files_name_the_flag_and_the_fix(self, tmp_path, name, text, match):
        with pytest.raises(DataError, match=rf"^--labels: .*{match}"):
            read_labels(write(tmp_path / name, text))


class TestGroundTruth:
    def test_caffe_val_txt(self, tmp_path):
        truth = read_ground_truth(write(tmp_path / "val.txt", "a.JPEG 2\nb.JPEG 0\n"), None)
        assert truth == {"a.JPEG": 2, "b.JPEG": 0}

    def test_kaggle_solution_csv_needs_synset_ids(self, tmp_path):
        csv = write(tmp_path / "LOC_val_solution.csv",
                    "ImageId,PredictionString\nv_1,n01484850 1 2 3 4 n01484850 5 6 7 8\nv_2,n01440764 0 0 9 9\n")
        labels = read_labels(write(tmp_path / "LOC_synset_mapping.txt", SYNSETS))
        assert read_ground_truth(csv, labels) == {"v_1": 2, "v_2": 0}
        with pytest.raises(DataError, match="need --labels"):
            read_ground_truth(csv, None)

    def test_the_devkit_numbers_are_refused_with_the_reason(self, tmp_path):
        with pytest.raises(DataError, match=r"meta\.mat"):
            read_ground_truth(write(tmp_path / "ILSVRC2012_validation_ground_truth.txt", "490\n361\n171\n"), None)


class TestLayouts:
    def test_flat_folder_with_ground_truth(self, tmp_path):
        images(tmp_path / "val", ["v_2.JPEG", "v_1.JPEG", "v_3.JPEG"])
        write(tmp_path / "gt.txt", "v_1.JPEG 1\nv_2.JPEG 0\nv_3.JPEG 2\nv_9.JPEG 1\n")  # v_9: not here, ignored
        labels = read_labels(write(tmp_path / "synsets.txt", SYNSETS))
        src = open_source(tmp_path / "val", "test", flag="--eval-data", labels=labels, ground_truth=tmp_path / "gt.txt")
        assert [src.ident(i) for i in range(len(src))] == ["v_1.JPEG", "v_2.JPEG", "v_3.JPEG"]
        assert src.labels.tolist() == [1, 0, 2] and src.class_names == labels.names

    def test_an_unlabelled_image_is_an_error(self, tmp_path):
        images(tmp_path / "val", ["a.png", "b.png"])
        with pytest.raises(DataError, match=r"^--eval-data: .*1 of its 2 images, e.g. b.png"):
            open_source(tmp_path / "val", "test", flag="--eval-data", ground_truth=write(tmp_path / "gt", "a.png 0\n"))

    def test_synset_folders_map_by_id_and_a_subset_evaluates(self, tmp_path):
        images(tmp_path / "val" / "n01484850", ["x.png"])
        images(tmp_path / "val" / "n01440764", ["y.png", "z.png"])
        images(tmp_path / "train" / "n01440764", ["t.png"])
        labels = read_labels(write(tmp_path / "synsets.txt", SYNSETS))
        src = open_source(tmp_path, "test", flag="--eval-data", labels=labels)  # val/ is the test split
        assert src.class_names == labels.names and src.labels.tolist() == [0, 0, 2]
        with pytest.raises(DataError, match="class folder"):
            open_source(tmp_path, "test", flag="--eval-data", labels=ClassLabels(("a",), ("n0",)))

    def test_plain_names_must_match_the_folder_count(self, tmp_path):
        images(tmp_path / "cat", ["1.png"])
        images(tmp_path / "dog", ["1.png"])
        assert open_source(tmp_path, "test", flag="--eval-data",
                           labels=ClassLabels(("Cat", "Dog"))).class_names == ("Cat", "Dog")
        with pytest.raises(DataError, match="has 2 classes but --labels names 3"):
            open_source(tmp_path, "test", flag="--eval-data", labels=ClassLabels(("a", "b", "c")))


@pytest.fixture(scope="module")
def loaded():
    return load_model(EMBEDDED_MODEL)


class TestBuildFlags:
    """The flags reach the preprocessing record the bundle stores (and ``infer`` applies)."""

    def test_labels_ground_truth_and_resize_flags(self, tmp_path, loaded):
        names = [f"v_{i}.png" for i in range(12)]
        images(tmp_path / "val", names, size=(36, 30))
        write(tmp_path / "gt.txt", "".join(f"{n} {i % 10}\n" for i, n in enumerate(names)))
        classes = [f"class {c}" for c in "abcdefghij"]
        write(tmp_path / "classes.txt", "\n".join(classes) + "\n")
        images(tmp_path / "calib" / "any", [f"c{i}.png" for i in range(6)])
        settings = BuildSettings(targets=("openvino",), eval_data=str(tmp_path / "val"),
                                 calib_data=str(tmp_path / "calib"), calib_samples=4,
                                 ground_truth=tmp_path / "gt.txt", labels=tmp_path / "classes.txt",
                                 resize=32, interpolation="bicubic", eval_sample_size=5)
        data = data_stage(settings, loaded, Ui(quiet=True))
        assert data.prep.class_names == tuple(classes)
        assert (data.prep.resize, data.prep.crop, data.prep.interpolation) == (32, "center", "bicubic")
        assert data.prep.crop_ratio == pytest.approx(28 / 32)
        assert data.evals.labels.tolist() == [int(n[2:-4]) % 10 for n in sorted(names)]
        assert len(data.sample) == 5 and data.sample.pixels.shape == (5, 28, 28, 1)
        np.testing.assert_array_equal(data.sample.labels, data.evals.labels[data.evals.positions(data.sample.idents)])

    def test_a_ratio_and_the_family_default(self, loaded):
        settings = BuildSettings(targets=("openvino",), resize=0.5, crop="center", eval_samples=4, calib_samples=4)
        prep = data_stage(settings, loaded, Ui(quiet=True)).prep
        assert (prep.resize, prep.crop_ratio, prep.resize_side) == (None, 0.5, 56)

    @pytest.mark.parametrize("args, match", [
        (["--resize", "abc"], "pixels"), (["--crop", "middle"], "center"), (["--channel-order", "GBR"], "RGB"),
        (["--resize", "0.05"], "--resize"), (["--ground-truth", "gt.txt"], "--eval-data too"),
    ])
    def test_bad_flags_are_refused_before_any_work(self, args, match):
        result = CliRunner().invoke(main, ["build", *args, "--out", "nowhere-never-written"])
        assert result.exit_code != 0 and match in result.output, result.output
        assert not Path("nowhere-never-written").exists()

    def test_a_resize_below_the_input_size_names_the_flag(self):
        with pytest.raises(ConfigError, match=r"^--resize 20 is the shorter side"):
            Preprocessing((28, 28), 1, (0.5,), (0.5,), resize=20)
