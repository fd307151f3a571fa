"""The converged image comparison's rows (`benchmarks/image_converged.py`): what a stage's
metrics.json gives each SAE of the comparison."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import image_converged  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


def test_only_the_analysed_saes_get_their_within_object_switch_rates():
    found = {"saes": {"latent/topk_k4": {"fvu": 0.19}, "latent/topk_k8": {"fvu": 0.12},
                      "latent/contextual_gated_k4": {"fvu": 0.14}},
             "alignment": {"latent": {"topk_k4": {"within_object_switch_rate": 0.009, "n_live": 511,
                                                  "switch_rate_of_object_features": 0.004,
                                                  "object_label_auroc": 0.6},
                                      # reported before the object features' rate was measured
                                      "contextual_gated_k4": {"within_object_switch_rate": 0.0056, "n_live": 437}},
                           "encoder.mid": {"topk_k8": {"within_object_switch_rate": 0.5}}}}
    rows = image_converged.rows_with_switch_rates(found, "latent")
    assert rows == {"topk_k4": {"fvu": 0.19, "within_object_switch_rate": 0.009, "object_label_auroc": 0.6,
                                "switch_rate_of_object_features": 0.004},
                    "topk_k8": {"fvu": 0.12}, "contextual_gated_k4": {"fvu": 0.14, "within_object_switch_rate": 0.0056}}
    assert "within_object_switch_rate" not in found["saes"]["latent/topk_k4"]  # the stage's rows are not changed
    # a stage without the scenes' truth (a folder of photos) has no alignment
    assert image_converged.rows_with_switch_rates({"saes": found["saes"]}, "latent")["topk_k4"] == {"fvu": 0.19}
