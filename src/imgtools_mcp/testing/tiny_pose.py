"""A tiny random ViTPose and RT-DETR person detector from configs only, saved like hub models, for offline tests."""

from __future__ import annotations

from pathlib import Path

import torch


def make_test_pose_model(out_dir: Path, *, seed: int = 0) -> Path:
    """ViTPose's architecture (2-layer, 32-wide backbone, 64x48 input, 17 COCO keypoints) with random weights.

    The heatmap head's weights are scaled up so the random heatmaps peak well above the drawing threshold:
    a pose map test then has keypoints to draw instead of an empty black image.
    """
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    torch.manual_seed(seed)
    backbone = VitPoseBackboneConfig(
        image_size=[64, 48], patch_size=[16, 16], hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
        out_indices=[2],
    )
    model = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=17))
    with torch.no_grad():
        model.head.conv.weight.mul_(20.0)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    VitPoseImageProcessor(size={"height": 64, "width": 48}).save_pretrained(out_dir)
    return out_dir


def make_test_person_detector(out_dir: Path, *, seed: int = 0) -> Path:
    """RT-DETR's architecture (a one-block ResNet, 16-wide encoder and one decoder layer, labels person and cup)."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig

    torch.manual_seed(seed)
    backbone = RTDetrResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], layer_type="basic",
        out_features=["stage2", "stage3", "stage4"],
    )
    config = RTDetrConfig(
        backbone_config=backbone, encoder_in_channels=[16, 16, 16], decoder_in_channels=[16, 16, 16], d_model=16,
        encoder_hidden_dim=16, encoder_ffn_dim=16, decoder_ffn_dim=16, num_queries=10, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, decoder_n_points=2, num_denoising=0, anchor_image_size=None,
        num_labels=2, id2label={0: "person", 1: "cup"}, label2id={"person": 0, "cup": 1},
    )
    out_dir = Path(out_dir)
    RTDetrForObjectDetection(config).save_pretrained(out_dir)
    RTDetrImageProcessor(size={"height": 64, "width": 64}).save_pretrained(out_dir)
    return out_dir
