"""The HTML report: what it shows, that it is self-contained, and a real browser that sorts, slides and draws it."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from perspective_unet.cli import main
from perspective_unet.data.layouts.files import load_h5
from perspective_unet.engine.report import report_evaluation
from perspective_unet.errors import InputError
from perspective_unet.metrics import score_case
from perspective_unet.viz.palette import class_color
from perspective_unet.viz.report import case_slices, slice_dice
from tests.viz.browser import Browser, find_chromium

CLASS_NAMES = ("background", "square", "disc")
AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])
SHAPE = (40, 36, 7)  # (i, j, k): canonical (Z, H, W) = (7, 36, 40)


def _volumes(seed: int, damage: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image, its reference and a prediction that misses the disc on ``damage`` slices (stored (i, j, k))."""
    rng = np.random.default_rng(seed)
    reference = np.zeros(SHAPE, dtype=np.uint8)
    ii, jj = np.mgrid[: SHAPE[0], : SHAPE[1]]
    for k in range(1, SHAPE[2] - 1):
        x, y = rng.integers(4, 16, 2)
        reference[x : x + 10, y : y + 8, k] = 1
        reference[..., k][(ii - 28) ** 2 + (jj - 24) ** 2 <= 25] = 2
    prediction = reference.copy()
    prediction[..., 1 : 1 + damage][prediction[..., 1 : 1 + damage] == 2] = 0
    image = (rng.normal(0, 20, SHAPE) + 200.0 * reference).astype(np.float32)
    return image, reference, prediction


def _metrics(prediction: np.ndarray, reference: np.ndarray) -> dict[str, dict[str, float | None]]:
    corrected = score_case(prediction, reference, 3, protocol="corrected", spacing=(0.8, 0.8, 2.5))
    out = {}
    for k, scores in corrected.items():
        hd = None if np.isnan(scores["hd95"]) else float(scores["hd95"])
        out[str(k)] = {"Dice": None if np.isnan(scores["dice"]) else float(scores["dice"]), "HD95": hd}
    return out


def _nan(value: float | None) -> float:
    return np.nan if value is None else value


def write_evaluation(folder: Path, cases: dict[str, int], keep_predictions: bool = True) -> Path:
    """An evaluation folder in nnU-Net's layout, as ``evaluate --pred --ref`` writes it, with images beside."""
    for name in ("pred", "ref", "images"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    entries = []
    for seed, (case, damage) in enumerate(cases.items()):
        image, reference, prediction = _volumes(seed, damage)
        nib.save(nib.Nifti1Image(image, AFFINE), str(folder / "images" / f"{case}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(reference, AFFINE), str(folder / "ref" / f"{case}.nii.gz"))
        if keep_predictions:
            nib.save(nib.Nifti1Image(prediction, AFFINE), str(folder / "pred" / f"{case}.nii.gz"))
        entries.append(
            {
                "case": case,
                "prediction_file": str(folder / "pred" / f"{case}.nii.gz") if keep_predictions else "",
                "reference_file": str(folder / "ref" / f"{case}.nii.gz"),
                "metrics": _metrics(prediction, reference),
            }
        )
    mean = {}
    for k in ("1", "2"):
        mean[k] = {m: float(np.nanmean([_nan(e["metrics"][k][m]) for e in entries])) for m in ("Dice", "HD95")}
    summary = {
        "format_version": 2,
        "num_cases": len(entries),
        "protocols": ["corrected"],
        "class_names": {str(i): n for i, n in enumerate(CLASS_NAMES)},
        "foreground_mean": {m: float(np.mean([mean[k][m] for k in mean])) for m in ("Dice", "HD95")},
        "mean": mean,
        "metric_per_case": entries,
    }
    (folder / "eval").mkdir(exist_ok=True)
    (folder / "eval" / "summary.json").write_text(json.dumps(summary))
    return folder / "eval"


def _data_uri_pngs(text: str) -> list[np.ndarray]:
    pictures = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(p))).convert("RGB")) for p in pictures]


def _tinted(picture: np.ndarray, class_id: int) -> np.ndarray:
    """Pixels tinted by a class's color over gray: its strongest channel stands out from the other two."""
    color = class_color(class_id).astype(int)
    strongest = int(np.argmax(color))
    others = [c for c in range(3) if c != strongest]
    picture = picture.astype(int)
    return np.all([picture[..., strongest] - picture[..., c] > 30 for c in others], axis=0)


CASES = {"case_good": 0, "case_bad": 3, "case_fair": 1}


def test_slice_dice_equals_a_per_slice_reference():
    rng = np.random.default_rng(4)
    reference, prediction = rng.integers(0, 3, (2, 5, 6, 7))
    reference[2] = prediction[2] = 0
    expected = []
    for z in range(5):
        present = [k for k in (1, 2) if (reference[z] == k).any() or (prediction[z] == k).any()]
        dices = [
            2
            * ((reference[z] == k) & (prediction[z] == k)).sum()
            / ((reference[z] == k).sum() + (prediction[z] == k).sum())
            for k in present
        ]
        expected.append(np.mean(dices) if dices else np.nan)
    np.testing.assert_allclose(slice_dice(reference, prediction), expected)


def test_case_slices_choose_the_worst_and_best_slice_and_cap_the_frames():
    _, reference, prediction = (np.transpose(v, (2, 1, 0)) for v in _volumes(0, 2))  # canonical (Z, H, W)
    image = np.random.default_rng(0).random(reference.shape)
    view = case_slices("c", image, reference, prediction, max_frames=3, panel_px=80)
    dice = slice_dice(reference, prediction)
    assert view.worst[0] in (1, 2) and view.worst[1] == pytest.approx(np.nanmin(dice))
    assert view.best[1] == 1.0 and view.best[0] not in (1, 2)
    assert len(view.frames) <= 5 and {view.worst[0], view.best[0]} <= {z for z, _ in view.frames}
    panel = np.asarray(Image.open(io.BytesIO(view.worst[2])).convert("RGB"))
    assert panel.shape == (72, 3 * 80 + 8, 3)  # 36 x 40 slices doubled to 72 x 80, three panels and two gaps


def test_report_of_an_evaluation_folder_is_one_self_contained_page(tmp_path):
    evaluation = write_evaluation(tmp_path, CASES)
    path = report_evaluation(evaluation, images=tmp_path / "images", panel_px=80)
    assert path == evaluation / "report.html"
    text = path.read_text()
    # Nothing is fetched: no external URL in any src or href, no stylesheet or script file.
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", text)
    assert "<link" not in text and "<script src" not in text
    # The tables: the summary's classes and the foreground mean; one linked row per case.
    assert "foreground mean" in text and ">square<" in text and ">disc<" in text
    for case in CASES:
        assert f'<a href="#case-{case}">{case}</a>' in text
    # Cases are drawn worst first; the bad case's worst slice misses its disc (Dice of one class of two: 0.5).
    assert text.index('id="case-case_bad"') < text.index('id="case-case_fair"') < text.index('id="case-case_good"')
    assert re.search(r"worst slice [123] \(Dice 0\.500\)", text)
    pictures = _data_uri_pngs(text)
    assert len(pictures) >= 2 + 3 * 2  # two box plots, and worst and best of every case (slider frames besides)
    assert any(_tinted(p, 2).sum() > 20 for p in pictures)


def test_only_the_lowest_cases_get_a_slider(tmp_path):
    evaluation = write_evaluation(tmp_path, CASES)
    text = report_evaluation(evaluation, images=tmp_path / "images", slider_cases=1, panel_px=40).read_text()
    assert re.findall(r'<div class="slider" data-case="([^"]+)"', text) == ["case_bad"]
    assert "The 1 cases of lowest mean Dice have a slider" in text
    assert text.count("<figcaption>worst slice") == 3


def test_report_names_cases_without_predictions_and_refuses_to_overwrite(tmp_path):
    evaluation = write_evaluation(tmp_path, {"case_a": 1}, keep_predictions=False)
    path = report_evaluation(evaluation, tmp_path / "r.html")
    text = path.read_text()
    assert "case_a: no prediction file was kept (evaluate with --save-predictions)" in text
    assert 'id="case-case_a"' not in text
    with pytest.raises(FileExistsError, match="already exists"):
        report_evaluation(evaluation, tmp_path / "r.html")
    # A summary of an earlier layout, and one without its cases: one line naming the file.
    (evaluation / "summary.json").write_text(json.dumps({"mean_dice": 0.8, "per_class": {}}))
    with pytest.raises(
        InputError, match=r"summary\.json is not an evaluation summary of this version .*format_version"
    ):
        report_evaluation(evaluation, tmp_path / "r.html", overwrite=True)
    (evaluation / "summary.json").write_text(json.dumps({"format_version": 2, "class_names": {"0": "background"}}))
    with pytest.raises(InputError, match=r"summary\.json is not an evaluation summary of this version \(KeyError"):
        report_evaluation(evaluation, tmp_path / "r.html", overwrite=True)


def test_report_command_end_to_end_and_bad_input(tmp_path, capsys):
    evaluation = write_evaluation(tmp_path, {"case_a": 1, "case_b": 0})
    target = tmp_path / "out" / "report.html"
    assert main(["report", str(evaluation), "-o", str(target), "--images", str(tmp_path / "images")]) == 0
    assert target.is_file() and "wrote" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.html")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "nothing" in error
    assert not (tmp_path / "x.html").exists()


def test_evaluate_report_keeps_the_scored_predictions_and_draws_every_case(tiny_dataset, checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(tiny_dataset), "-o", str(out), "--report"]
    assert main(argv) == 0
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["case0004.nii.gz", "case0005.nii.gz"]
    text = (out / "report.html").read_text()
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    for case in ("case0004", "case0005"):
        assert f'id="case-{case}"' in text
        # The kept prediction is the one scored: its Dice against the prepared label is per_case.csv's.
        _, label, _ = load_h5(tiny_dataset / "test_vol_h5" / f"{case}.npy.h5", label_only=True)
        prediction = np.asarray(nib.load(str(out / "predictions" / f"{case}.nii.gz")).dataobj)
        for row in (r for r in rows if r["case"] == case):
            expected = score_case(prediction, label, 3, protocol="corrected", spacing=(3.0, 0.8, 0.8))
            assert float(row["Dice"]) == pytest.approx(expected[int(row["class_id"])]["dice"], nan_ok=True)
    capsys.readouterr()
    assert main(argv) == 2  # the reports exist: nothing is replaced without --overwrite
    assert "already exists" in capsys.readouterr().err
    # Evaluated again without --report: the page of the replaced evaluation does not stay beside the new summary.
    assert main([*argv[:-1], "--overwrite"]) == 0
    assert (out / "summary.json").is_file() and not (out / "report.html").exists()


CHROMIUM = find_chromium()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium) to load the report in")
def test_report_in_a_headless_browser_sorts_slides_and_shows_the_overlays(tmp_path):
    evaluation = write_evaluation(tmp_path, CASES)
    path = report_evaluation(evaluation, images=tmp_path / "images", panel_px=120)
    with Browser(CHROMIUM) as browser:
        browser.open(path.as_uri())
        assert browser.evaluate("document.body.dataset.ready") == "1"
        # Sort the cases by mean Dice: ascending, then descending on a second click.
        cases = "Array.from(document.querySelectorAll('#table-1 tbody tr')).map(r => r.cells[0].textContent)"
        values = "Array.from(document.querySelectorAll('#table-1 tbody tr')).map(r => +r.cells[1].dataset.value)"
        browser.evaluate("document.querySelectorAll('#table-1 th')[1].click()")
        ascending = browser.evaluate(values)
        assert ascending == sorted(ascending) and browser.evaluate(cases)[0] == "case_bad"
        browser.evaluate("document.querySelectorAll('#table-1 th')[1].click()")
        assert browser.evaluate(values) == sorted(ascending, reverse=True)
        browser.evaluate("document.querySelectorAll('#table-1 th')[0].click()")
        assert browser.evaluate(cases) == sorted(CASES)
        # Move the first case's slider to its last frame: the picture and the slice shown change.
        slider = "document.querySelector('#case-case_bad .slider')"
        before = browser.evaluate(f"[{slider}.dataset.slice, {slider}.querySelector('img').src.length]")
        browser.evaluate(
            f"(() => {{ const s = {slider}.querySelector('input'); s.value = s.max; "
            "s.dispatchEvent(new Event('input')); })()"
        )
        after = browser.evaluate(f"[{slider}.dataset.slice, {slider}.querySelector('img').src.length]")
        assert after[0] != before[0] and after[0] == "5"
        assert browser.evaluate(f"{slider}.querySelector('output').textContent").startswith("slice 5 ")
        shot = browser.screenshot(tmp_path / "report.png")
        loaded = browser.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert loaded
        assert browser.errors() == []
        assert [u for u in browser.requested_urls() if not u.startswith(("file:", "data:"))] == []
    screenshot = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert screenshot.shape[0] > 1000  # the whole page, cases included
    for k in (1, 2):  # both classes' overlay colors are on screen
        assert _tinted(screenshot, k).sum() > 100
