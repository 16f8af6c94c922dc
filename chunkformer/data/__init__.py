"""Video data for training and evaluating video classifiers: lists, decoding, clip sampling, transforms,
multi-view evaluation and a synthetic motion dataset that needs no download."""

from chunkformer.data.clip_dataset import ClipDataset, SampleFailure, TooManyUnreadableError, collate_clips
from chunkformer.data.clip_sampling import ClipSampler, TooFewFramesError
from chunkformer.data.evaluation import ClassificationMetrics, classification_metrics, multiview_scores
from chunkformer.data.motion import (
    MOTION_CLASSES,
    MOTION_FLIP_LABEL_MAP,
    MOTION_VARIANTS,
    MotionDatasetSpec,
    default_motion_root,
    ensure_motion_dataset,
    motion_classes,
    motion_flip_label_map,
    render_motion_video,
)
from chunkformer.data.multiview_dataset import MultiViewDataset, collate_views
from chunkformer.data.sampler import ResumableSampler
from chunkformer.data.transforms import EvalTransform, TrainTransform
from chunkformer.data.video_io import VideoDecodeError, VideoInfo, decode_frames, probe_video
from chunkformer.data.video_list import (
    DroppedLine,
    VideoList,
    VideoListError,
    VideoRecord,
    read_class_folders,
    read_classes,
    read_video_list,
)

__all__ = [
    "MOTION_CLASSES",
    "MOTION_FLIP_LABEL_MAP",
    "MOTION_VARIANTS",
    "ClassificationMetrics",
    "ClipDataset",
    "ClipSampler",
    "DroppedLine",
    "EvalTransform",
    "MotionDatasetSpec",
    "MultiViewDataset",
    "ResumableSampler",
    "SampleFailure",
    "TooFewFramesError",
    "TooManyUnreadableError",
    "TrainTransform",
    "VideoDecodeError",
    "VideoInfo",
    "VideoList",
    "VideoListError",
    "VideoRecord",
    "classification_metrics",
    "collate_clips",
    "collate_views",
    "decode_frames",
    "default_motion_root",
    "ensure_motion_dataset",
    "motion_classes",
    "motion_flip_label_map",
    "multiview_scores",
    "probe_video",
    "read_class_folders",
    "read_classes",
    "read_video_list",
    "render_motion_video",
]
