"""Why it was memorized: the template rules, the recitation / reconstruction / recollection
taxonomy on planted sequences (real dataset files, a real BPE tokenizer trained here, real report
runs), EleutherAI's published counts, examples decoded, and the HTML report in a real headless
browser."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli import cli_error
from tests.required import unavailable
from tests.test_report import CONT_LEN, write_run
from vmem.cli import main
from vmem.demo.corpus import save_tokenizer, train_tokenizer
from vmem.io import mmidx
from vmem.study.compute import fit_power_law
from vmem.study.document import visible
from vmem.study.templates import is_incrementing, is_repeating, is_templated

PYTHIA_1B = "EleutherAI/pythia-1b"
SEQ_LEN = 80
WINDOW = 32 + CONT_LEN

# The shared doc's examples (docs/why-memorized.md), as it states them.
INCREMENTING = ["1, 2, 3, 4, 5, 6", "item 10 item 20 item 30 item 40", "0x10 0x20 0x30 0x40"]
REPEATING = ["abcabcabcabc", "- - - - - -", "\n\n\n\n\n"]
PROSE = ('def lookup(table, key):\n\tif key < 0 and key > -9: return table["<b>" & key]\n'
         "    # the quick brown fox jumps over the lazy dog, a sentence with many letters\n")

# Planted sequences of the run [0, 20): index → (text, count or None where unlisted, memorized).
COUNTING = ", ".join(str(n) for n in range(100, 200)) + ", "
PLANTED = {
    2: (COUNTING, 1, True),  # templated, rare: reconstruction
    3: ("abc " * 60, 6, True),  # templated but duplicated 6 times: recitation comes first
    4: (", ".join(str(n) for n in range(500, 700, 2)), 5, True),  # reconstruction, or recitation
    # with --recitation-threshold 5
    5: (PROSE * 3, 1, True),  # recollection
    6: (PROSE.upper() * 3, 9, True),  # recitation
    7: (PROSE[::-1] * 3, None, True),  # unlisted
    8: (COUNTING, 50, False),  # not memorized: outside the taxonomy
}


def test_the_shared_docs_template_examples_classify_as_stated() -> None:
    for text in INCREMENTING:
        assert is_incrementing(text) and is_templated(text), repr(text)
    for text in REPEATING:
        assert is_repeating(text) and not is_incrementing(text) and is_templated(text), repr(text)
    for text in ("The quick brown fox jumps over the lazy dog", "1 2 4 8 16 32", PROSE, ""):
        assert not is_templated(text), repr(text)
    # A constant number is no increment (step 0), but repeats: templated by the second rule.
    assert not is_incrementing("7 7 7 7 7 7") and is_repeating("7 7 7 7 7 7")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """A tokenizer trained on the planted texts, a merged dataset whose rows start with them
    (other rows: prose), its duplicates table and a run that memorized the planted ones."""
    root = tmp_path_factory.mktemp("taxonomy")
    texts = [text for text, _, _ in PLANTED.values()] + [PROSE]
    tokenizer = train_tokenizer(texts * 4, vocab=400)
    save_tokenizer(tokenizer, root / "tokenizer")
    filler = tokenizer.encode(PROSE * 8).ids
    rows = np.zeros((40, SEQ_LEN), dtype=np.uint16)
    for i in range(len(rows)):
        ids = tokenizer.encode(PLANTED[i][0] * 4).ids if i in PLANTED else filler[i:]
        assert len(ids) >= SEQ_LEN
        rows[i] = ids[:SEQ_LEN]
    mmidx.write_merged(root / "data" / "corpus", rows)
    runs = root / "runs"
    runs.mkdir()
    memorized = [i for i, (_, _, m) in PLANTED.items() if m]
    write_run(runs, "run", model=PYTHIA_1B, step=143_000, start=0, stop=20, memorized=memorized,
              params=1_000_000_000)
    set_recorded_data(runs / "run.manifest.json", str(root / "data" / "corpus"))
    listed = [i for i in range(40) if i not in PLANTED or PLANTED[i][1] is not None]
    counts = [PLANTED[i][1] if i in PLANTED else 1 for i in listed]
    pq.write_table(pa.table(dict(
        index=pa.array(listed, pa.int64()), count=pa.array(counts, pa.int64()),
        freq_min=pa.array([10 ** (i % 4) for i in listed], pa.int64()),
        freq_median=pa.array([1e4] * len(listed), pa.float64()),
        freq_max=pa.array([10 ** 5] * len(listed), pa.int64()))), root / "counts.parquet")
    return dict(root=root, runs=runs, tokenizer=str(root / "tokenizer"), rows=rows,
                counts=str(root / "counts.parquet"), decode=tokenizer.decode)


def set_recorded_data(manifest: Path, location: str) -> None:
    data = json.loads(manifest.read_text())
    data["settings"]["data"].update(location=location, num_sequences=40, seq_len=SEQ_LEN)
    manifest.write_text(json.dumps(data))


def taxonomy(report: Path) -> dict[str, int]:
    table = pd.read_csv(report / "tables" / "taxonomy.csv")
    assert list(table.columns) == ["run", "category", "sequences", "share"]
    assert np.isclose(table["share"].sum(), 1.0)
    return dict(zip(table["category"], table["sequences"], strict=True))


def report(corpus: dict, out: Path, *extra: str) -> Path:
    assert main(["report", str(corpus["runs"]), "-o", str(out), "--duplicates",
                 corpus["counts"], *extra]) == 0
    return out


def test_precedence_recitation_before_reconstruction(corpus: dict, tmp_path: Path) -> None:
    out = report(corpus, tmp_path / "report", "--tokenizer", corpus["tokenizer"])
    # 3 (templated, 6 copies) and 6 (prose, 9) recite; 2 and 4 (templated, rare) reconstruct; 5
    # (prose, once) is recollection; 7 is not listed; 8 is not memorized.
    assert taxonomy(out) == {"recitation": 2, "reconstruction": 2, "recollection": 1,
                             "unlisted": 1}
    # The texts that decide it are templated or not as planted.
    for i, templated in ((2, True), (3, True), (4, True), (5, False), (6, False)):
        assert is_templated(corpus["decode"](corpus["rows"][i, :WINDOW].tolist())) == templated
    assert (out / "figures" / "taxonomy.png").stat().st_size > 0
    markdown = (out / "report.md").read_text()
    assert "recitation, reconstruction, recollection" in markdown
    assert "reconstruction category" not in markdown


def test_one_row_per_run_and_category(corpus: dict, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(corpus["runs"], runs)
    for name, model, step, memorized in (("small", "EleutherAI/pythia-160m", 143_000, [2, 5]),
                                          ("early", PYTHIA_1B, 23_000, [3, 9])):
        write_run(runs, name, model=model, step=step, start=0, stop=20, memorized=memorized,
                  params=160_000_000 if "160m" in model else 1_000_000_000)
        set_recorded_data(runs / f"{name}.manifest.json", str(corpus["root"] / "data" / "corpus"))
    out = tmp_path / "report"
    assert main(["report", str(runs), "-o", str(out), "--duplicates", corpus["counts"],
                 "--tokenizer", corpus["tokenizer"]]) == 0
    table = pd.read_csv(out / "tables" / "taxonomy.csv")
    got = {(r.run, r.category): r.sequences for r in table.itertuples()}
    planted = {"pythia-160m-step143000": (0, 1, 1), "pythia-1b-step23000": (1, 0, 1),
               "pythia-1b-step143000": (2, 2, 1)}
    assert got == {
        **{(run, category): n for run, counts in planted.items()
           for category, n in zip(("recitation", "reconstruction", "recollection"), counts,
                                  strict=True)},
        ("pythia-1b-step143000", "unlisted"): 1}
    for run, rows in table.groupby("run"):
        assert np.isclose(rows["share"].sum(), 1.0), run
    assert (out / "figures" / "taxonomy.png").stat().st_size > 10_000


def test_the_threshold_is_a_flag(corpus: dict, tmp_path: Path, capsys) -> None:
    out = report(corpus, tmp_path / "report", "--tokenizer", corpus["tokenizer"],
                 "--recitation-threshold", "5")
    assert taxonomy(out) == {"recitation": 3, "reconstruction": 1, "recollection": 1,
                             "unlisted": 1}
    err = cli_error(capsys, ["report", str(corpus["runs"]), "-o", str(tmp_path / "x"),
                             "--duplicates", corpus["counts"], "--recitation-threshold", "0"])
    assert "--recitation-threshold 0: expected a count of at least 1" in err


def test_without_a_tokenizer_reconstruction_is_left_out_in_one_line(corpus: dict,
                                                                    tmp_path: Path) -> None:
    out = report(corpus, tmp_path / "report")
    assert taxonomy(out) == {"recitation": 2, "not recitation": 3, "unlisted": 1}
    markdown = (out / "report.md").read_text()
    lines = [line for line in markdown.splitlines() if "reconstruction category" in line]
    assert len(lines) == 1 and "--tokenizer" in lines[0], lines
    assert not (out / "tables" / "examples.csv").exists()
    assert "Examples of memorized sequences" not in markdown


def test_examples_appear_decoded(corpus: dict, tmp_path: Path) -> None:
    out = report(corpus, tmp_path / "report", "--tokenizer", corpus["tokenizer"])
    examples = pd.read_csv(out / "tables" / "examples.csv", keep_default_na=False)
    assert sorted(examples["index"]) == [2, 3, 4, 5, 6, 7]  # every memorized one: few enough
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for row in examples.itertuples():
        prompt = corpus["decode"](corpus["rows"][row.index, :32].tolist())
        continuation = corpus["decode"](corpus["rows"][row.index, 32:WINDOW].tolist())
        assert (row.prompt, row.continuation) == (prompt, continuation)
        assert f"{visible(prompt)} | {visible(continuation)}" in markdown
        assert html.escape(visible(continuation)) in page
    prose = examples.loc[examples["index"] == 5, "continuation"].item()
    assert "\n" not in visible(prose) and "↵" in visible(prose + "\n")
    assert "<b>" not in page  # the planted markup is shown, not rendered
    # The tokens' windows come from the recorded dataset and from --data alike.
    again = report(corpus, tmp_path / "again", "--tokenizer", corpus["tokenizer"], "--data",
                   str(corpus["root"] / "data" / "corpus"))
    assert (again / "tables" / "examples.csv").read_bytes() == \
        (out / "tables" / "examples.csv").read_bytes()


def test_unreadable_data_or_tokenizer_is_one_line(corpus: dict, tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(corpus["runs"], runs)
    set_recorded_data(runs / "run.manifest.json", str(tmp_path / "gone"))
    err = cli_error(capsys, ["report", str(runs), "-o", str(tmp_path / "out"), "--duplicates",
                             corpus["counts"], "--tokenizer", corpus["tokenizer"]])
    assert "run pythia-1b-step143000: its recorded dataset cannot be read" in err
    assert err.endswith("give --data")
    err = cli_error(capsys, ["report", str(runs), "-o", str(tmp_path / "out"), "--duplicates",
                             corpus["counts"], "--tokenizer", str(tmp_path / "no-tokenizer")])
    assert f"--tokenizer {tmp_path / 'no-tokenizer'}: no such folder" in err
    (tmp_path / "empty").mkdir()
    err = cli_error(capsys, ["report", str(runs), "-o", str(tmp_path / "out"), "--duplicates",
                             corpus["counts"], "--tokenizer", str(tmp_path / "empty")])
    assert f"--tokenizer {tmp_path / 'empty'}: cannot be loaded as a tokenizer" in err
    err = cli_error(capsys, ["report", str(runs), "-o", str(tmp_path / "out"), "--tokenizer",
                             corpus["tokenizer"]])
    assert "--tokenizer: the taxonomy and its examples need counts; give --duplicates" in err
    err = cli_error(capsys, ["report", str(runs), "-o", str(tmp_path / "out"), "--duplicates",
                             corpus["counts"], "--data", str(corpus["root"] / "data" / "corpus")])
    assert "--data: the sequences' tokens are read for templating and examples" in err
    assert not (tmp_path / "out").exists()


def test_token_rarity_only_with_frequency_columns(corpus: dict, tmp_path: Path) -> None:
    out = report(corpus, tmp_path / "report")
    rarity = pd.read_csv(out / "tables" / "token_rarity.csv")
    # freq_min is 10 ** (index % 4) for every listed index of [0, 20).
    listed = [i for i in range(20) if i not in PLANTED or PLANTED[i][1] is not None]
    memorized = {i for i, (_, _, m) in PLANTED.items() if m}
    expected = [[f"{10 ** k}-{10 ** (k + 1) - 1}", sum(i % 4 == k for i in listed),
                 sum(i % 4 == k and i in memorized for i in listed)] for k in range(4)]
    assert rarity[["rarest_token_frequency", "sequences", "memorized"]].values.tolist() == \
        expected
    assert (out / "figures" / "token_rarity.png").stat().st_size > 0
    # The old table index,count has no frequencies: no rarity, said in one line.
    bare = tmp_path / "bare.csv"
    pq.read_table(corpus["counts"], columns=["index", "count"]).to_pandas().to_csv(bare,
                                                                                  index=False)
    assert main(["report", str(corpus["runs"]), "-o", str(tmp_path / "bare"), "--duplicates",
                 str(bare)]) == 0
    assert not (tmp_path / "bare" / "tables" / "token_rarity.csv").exists()
    markdown = (tmp_path / "bare" / "report.md").read_text()
    assert sum("No token rarity" in line for line in markdown.splitlines()) == 1
    assert taxonomy(tmp_path / "bare") == taxonomy(out)


def test_eleutherais_published_table(corpus: dict, tmp_path: Path) -> None:
    """`sequence_id,counts` in uint32, as usvsnsp/generation-num-duplicates publishes it."""
    ours = pq.read_table(corpus["counts"])
    published = tmp_path / "published.parquet"
    pq.write_table(pa.table(dict(sequence_id=ours["index"].cast(pa.uint32()),
                                 counts=ours["count"].cast(pa.uint32()))), published)
    assert pq.read_schema(published).types == [pa.uint32(), pa.uint32()]
    assert main(["report", str(corpus["runs"]), "-o", str(tmp_path / "published"),
                 "--duplicates", str(published), "--tokenizer", corpus["tokenizer"]]) == 0
    mine = report(corpus, tmp_path / "mine", "--tokenizer", corpus["tokenizer"])
    for name in ("duplication", "taxonomy", "examples"):
        assert (tmp_path / "published" / "tables" / f"{name}.csv").read_bytes() == \
            (mine / "tables" / f"{name}.csv").read_bytes(), name
    assert "(sequence_id,counts)" in (tmp_path / "published" / "report.md").read_text()


def test_export_memorized_gains_count_and_category(corpus: dict, tmp_path: Path,
                                                   capsys) -> None:
    data = str(corpus["root"] / "data" / "corpus")
    run = str(corpus["runs"] / "run.parquet")
    out = tmp_path / "memorized.parquet"
    assert main(["export-memorized", run, "-o", str(out), "--data", data, "--duplicates",
                 corpus["counts"], "--tokenizer", corpus["tokenizer"]]) == 0
    table = pq.read_table(out)
    assert table.column_names == ["index", "tokens", "count", "category"]
    assert table["index"].to_pylist() == [2, 3, 4, 5, 6, 7]
    assert table["count"].to_pylist() == [1, 6, 5, 1, 9, None]
    assert table["category"].to_pylist() == ["reconstruction", "recitation", "reconstruction",
                                             "recollection", "recitation", "unlisted"]
    assert table["tokens"].to_pylist()[0] == corpus["rows"][2, :64].tolist()
    assert main(["export-memorized", run, "-o", str(out), "--data", data, "--duplicates",
                 corpus["counts"]]) == 0
    assert pq.read_table(out)["category"].to_pylist() == [
        "not recitation", "recitation", "not recitation", "not recitation", "recitation",
        "unlisted"]
    err = cli_error(capsys, ["export-memorized", run, "-o", str(out), "--data", data,
                             "--tokenizer", corpus["tokenizer"]])
    assert "--tokenizer: export-memorized decides categories from counts" in err


def test_sections_are_numbered_consecutively(corpus: dict, tmp_path: Path) -> None:
    """This report leaves out sections other reports show (log-probabilities, prompt lengths,
    forgetting ...): the numbers it shows still run 1, 2, 3 ..."""
    out = report(corpus, tmp_path / "report", "--tokenizer", corpus["tokenizer"])
    markdown = (out / "report.md").read_text()
    numbers = [int(line[3:].split(".")[0]) for line in markdown.splitlines()
               if line.startswith("## ") and line[3].isdigit()]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 8, numbers
    assert "Continuation log-probability" not in markdown  # one the numbers skip
    page = (out / "report.html").read_text()
    assert [int(h.split(".")[0]) for h in page.split("<h2>")[1:] if h[0].isdigit()] == numbers


def test_a_power_law_through_two_points_has_no_r2(tmp_path: Path) -> None:
    law = fit_power_law(np.array([1e18, 1e20]), np.array([0.1, 0.4]))
    assert law.points == 2 and np.isnan(law.r2)
    assert np.isclose(law(1e20), 0.4)  # the fit itself is kept
    three = fit_power_law(np.array([1e18, 1e19, 1e20]), np.array([0.1, 0.25, 0.4]))
    assert three.points == 3 and 0 < three.r2 < 1
    # In a report: two cheap runs of one family and target give a 2-point fit.
    runs = tmp_path / "runs"
    runs.mkdir()
    for size, params in (("70m", 70_426_624), ("160m", 162_322_944), ("410m", 405_334_016)):
        write_run(runs, f"pythia-{size}", model=f"EleutherAI/pythia-{size}", step=143_000,
                  start=0, stop=200, memorized=list(range(0, 200, 7 if size != "410m" else 3)),
                  params=params)
    assert main(["report", str(runs), "-o", str(tmp_path / "report")]) == 0
    fits = pd.read_csv(tmp_path / "report" / "tables" / "compute_fit.csv")
    assert fits["points"].tolist() == [2] and fits["r2"].isna().all()
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "R² needs 3 or more points, 2 points" in markdown
    assert "R² 1," not in markdown


# -- the HTML report in a real browser --------------------------------------------------------
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        reason = ("chromium not installed (apt-get install chromium; .ci/run installs it)")
        unavailable(reason)
    return found


def test_html_report_with_examples_opens_in_a_headless_browser(corpus: dict,
                                                               tmp_path: Path) -> None:
    browser = chromium()
    out = report(corpus, tmp_path / "report", "--tokenizer", corpus["tokenizer"])
    page = (out / "report.html").as_uri()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
              "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--enable-logging=stderr", "--v=0"]

    def run(*args: str, profile: str) -> subprocess.CompletedProcess:
        return subprocess.run([*common, f"--user-data-dir={tmp_path / profile}", *args, page],
                              capture_output=True, text=True, timeout=120, check=True)

    shot = tmp_path / "report.png"
    shown = run(f"--screenshot={shot}", "--window-size=1280,8000", profile="one")
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and shot.stat().st_size > 20_000
    dom = run("--dump-dom", profile="two")
    examples = pd.read_csv(out / "tables" / "examples.csv", keep_default_na=False)
    for text in [*examples["prompt"], *examples["continuation"]]:
        # The DOM as the browser parsed it: the text escaped once, as the report wrote it.
        assert html.escape(visible(text), quote=False) in dom.stdout, text
    assert dom.stdout.count('<pre class="example">') == len(examples)
    for log in (shown.stderr, dom.stderr):
        console = [line for line in log.splitlines() if "CONSOLE" in line]
        assert console == [], console


def test_templating_reads_the_text_semantic_memorization_decoded(tmp_path: Path) -> None:
    """semantic-memorization decoded the 64 tokens at transformers 4's default
    clean_up_tokenization_spaces=True; transformers 5 defaults to False and ignores True for BPE.
    A text whose spaces before punctuation vary repeats only once cleaned up: templated as
    semantic-memorization decided it, whichever transformers is installed."""
    from transformers import AutoTokenizer

    from vmem.data import open_dataset
    from vmem.study.merged_runs import load_run
    from vmem.study.taxonomy import Sequences, load_tokenizer

    rng = np.random.default_rng(5)
    text = "".join(f"we do{' ' * s}n't{' ' * c}, ab{' ' * d}. "
                   for s, c, d in rng.integers(0, 2, size=(40, 3)))
    trained = train_tokenizer([text] * 4, vocab=300)
    save_tokenizer(trained, tmp_path / "tokenizer")
    rows = np.array([trained.encode(text).ids[i:i + SEQ_LEN] for i in range(3)], dtype=np.uint16)
    mmidx.write_merged(tmp_path / "data" / "corpus", rows)
    run = load_run(str(write_run(tmp_path, "run", model=PYTHIA_1B, step=1, start=0, stop=3,
                                 memorized=[0, 1, 2])))
    tokenizer = load_tokenizer(str(tmp_path / "tokenizer"))
    sequences = Sequences(tokenizer, open_dataset(str(tmp_path / "data" / "corpus")))

    # transformers' own clean-up, forced where version 5 would skip it for a BPE tokenizer.
    cleaning = AutoTokenizer.from_pretrained(
        str(tmp_path / "tokenizer"),
        clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=True)
    windows = rows[:, :WINDOW].astype(np.int64)
    expected = [cleaning.decode(ids.tolist(), clean_up_tokenization_spaces=True) for ids in windows]
    raw = [cleaning.decode(ids.tolist(), clean_up_tokenization_spaces=False) for ids in windows]
    assert all(" n't" in r and " ." in r and " n't" not in e and " ." not in e
               for r, e in zip(raw, expected, strict=True))
    assert sequences.templating_texts(windows) == expected
    # Cleaning flips the decision: the raw text does not repeat, the cleaned one does.
    assert not any(map(is_templated, raw)) and all(map(is_templated, expected))
    assert sequences.templated(run, np.arange(3)).tolist() == [True, True, True]
    # The report's examples show the text as the model saw it, spaces kept.
    prompts, continuations = sequences.texts(run, np.arange(3))
    assert [p + c for p, c in zip(prompts, continuations, strict=True)] == raw
