"""Video data for training and evaluating video classifiers: lists (and the Kinetics, UCF101 and HMDB51 split
files), decoding, clip sampling, transforms, multi-view evaluation and a synthetic motion dataset that needs
no download."""

from chunkformer.data.clip_dataset import ClipDataset, SampleFailure, TooManyUnreadableError, collate_clips
from chunkformer.data.clip_sampling import ClipSampler, TooFewFramesError
from chunkformer.data.evaluation import ClassificationMetrics, classification_metrics, multiview_scores
from chunkformer.data.hmdb51 import read_hmdb51_split
from chunkformer.data.kinetics_csv import kinetics_clip_name, read_kinetics_csv
from chunkformer.data.label_flips import read_flip_label_map
from chunkformer.data.list_formats import LIST_FORMATS, ListFormat, detect_list_format, read_videos
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
from chunkformer.data.ucf101 import read_ucf101_class_index, read_ucf101_split
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
    "LIST_FORMATS",
    "MOTION_CLASSES",
    "MOTION_FLIP_LABEL_MAP",
    "MOTION_VARIANTS",
    "ClassificationMetrics",
    "ClipDataset",
    "ClipSampler",
    "DroppedLine",
    "EvalTransform",
    "ListFormat",
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
    "detect_list_format",
    "ensure_motion_dataset",
    "kinetics_clip_name",
    "motion_classes",
    "motion_flip_label_map",
    "read_flip_label_map",
    "multiview_scores",
    "probe_video",
    "read_class_folders",
    "read_classes",
    "read_hmdb51_split",
    "read_kinetics_csv",
    "read_ucf101_class_index",
    "read_ucf101_split",
    "read_video_list",
    "read_videos",
    "render_motion_video",
]
