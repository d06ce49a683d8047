"""Sharded frames for streaming: any source written as litdata chunks, one prefix per region and split.

``visionpilot-data action=shard data=<source> out=<dir or URL>`` writes

    <out>/visionpilot.json                 format, source, camera names, image format, frames per region and split,
                                           and the split manifest the shards were cut with
    <out>/<region>/<split>/index.json      litdata's index of the chunks
    <out>/<region>/<split>/chunk-*.bin     the frames, in source order
    <out>/<region>/<split>/frames.json     ``{"frames": [[frame_id, scene_id], ...]}`` in chunk order

``<out>`` is a local folder or an object-store URL (``s3://``, ``gs://``, ``azure://``; litdata uploads the chunks).
A region's frames live under its own prefix only, so a region's data can stay in its own bucket or jurisdiction and
a run on one region reads nothing else (``data=streaming data.regions=[gb]``). Splits are by scene, decided once
when sharding (the manifest is stored, so every run reads the same scenes as the same split).

Why litdata (and not WebDataset): its ``StreamingDataLoader`` saves and restores the position within an epoch,
which fault-tolerant training needs and WebDataset's tar streams do not offer; it assigns chunks to DDP ranks and
loader workers itself, shuffles chunks then items within a window, downloads chunks ahead into a bounded local
cache, and its ``optimize`` writes in parallel straight to a bucket. It is Lightning's own library, like the trainer.

One record per frame, three fields (a fixed structure, as litdata requires):
    ``header``  JSON: ids, region, driving side, timestamp, label kinds, lat/lon, meta, cameras (name, image size,
                encoded image length, 2D lane types), 3D lane types
    ``arrays``  an ``.npz`` of every numeric array (calibration, boxes, lanes, face/plate boxes where known) with
                its exact dtype and shape
    ``images``  the cameras' encoded images back to back: PNG (lossless, default), JPEG (smaller, lossy) or raw
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from visionpilot.data.frame import Boxes3D, CameraView, Frame, Lane
from visionpilot.data.sources.base import FrameRef, FrameSource
from visionpilot.data.splits import SplitManifest

log = logging.getLogger(__name__)

FORMAT = "visionpilot-shards"
VERSION = 1
META_FILE = "visionpilot.json"
WRITING_FILE = "visionpilot.writing.json"  # the regions a shard run may leave prefixes of; gone once it finishes
FRAMES_FILE = "frames.json"
IMAGE_FORMATS = ("png", "jpeg", "raw")
_URL_SCHEMES = ("s3://", "gs://", "azure://", "r2://", "hf://")


# -- one frame <-> one record --------------------------------------------------------------------------------------


def _encode_image(image: np.ndarray, image_format: str, jpeg_quality: int) -> bytes:
    if image_format == "raw":
        return np.ascontiguousarray(image, dtype=np.uint8).tobytes()
    ext, params = (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]) if image_format == "png" else \
        (".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)  # files hold BGR, as viewers expect
    if not ok:
        raise ValueError(f"could not encode an image of shape {image.shape} as {image_format}")
    return buf.tobytes()


def _decode_image(data: memoryview | bytes, image_format: str, size: Sequence[int], where: str) -> np.ndarray:
    h, w = int(size[0]), int(size[1])
    if image_format == "raw":
        if len(data) != h * w * 3:  # a truncated chunk or record: numpy's reshape error would name neither
            raise ValueError(f"{where}: a raw image of shape ({h}, {w}, 3) takes {h * w * 3} bytes, found "
                             f"{len(data)}; the shard is truncated or corrupt, re-shard")
        return np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3).copy()
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape != (h, w, 3):
        raise ValueError(f"{where}: the {image_format} image ({len(data)} bytes) does not decode to ({h}, {w}, 3), "
                         f"found {'no image' if bgr is None else bgr.shape}; the shard is truncated or corrupt, "
                         f"re-shard")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"frame field 'meta' must be JSON-serialisable, found {type(obj).__name__}")


def encode_frame(frame: Frame, image_format: str = "png", jpeg_quality: int = 95) -> dict[str, Any]:
    """One frame as a shard record (see the module docstring); label-only frames store no image bytes."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"shard image format must be one of {list(IMAGE_FORMATS)}, found '{image_format}'")
    arrays: dict[str, np.ndarray] = {}
    images: list[bytes] = []
    cameras = []
    for i, cam in enumerate(frame.cameras):
        for name in ("intrinsics", "extrinsics", "boxes_2d", "classes_2d", "box_ids_2d", "visibility_2d"):
            arrays[f"cam{i}.{name}"] = np.asarray(getattr(cam, name))
        if cam.privacy_boxes is not None:  # faces and plates (anonymisation); absent = unknown, as in the frame
            arrays[f"cam{i}.privacy_boxes"] = np.asarray(cam.privacy_boxes)
            arrays[f"cam{i}.privacy_classes"] = np.asarray(cam.privacy_classes)
        for j, lane in enumerate(cam.lanes_2d):
            arrays[f"cam{i}.lane{j}"] = lane.points
        data = b"" if cam.image is None else _encode_image(cam.image, image_format, jpeg_quality)
        images.append(data)
        cameras.append({"name": cam.name, "image_size": [int(v) for v in cam.image_size], "image_bytes": len(data),
                        "lane_types": [int(ln.type) for ln in cam.lanes_2d]})
    b = frame.boxes_3d
    for name in ("centers", "sizes", "yaws", "classes", "track_ids", "velocities"):
        arrays[f"boxes_3d.{name}"] = np.asarray(getattr(b, name))
    for j, lane in enumerate(frame.lanes_3d):
        arrays[f"lane3d.{j}"] = lane.points
    header = {
        "version": VERSION, "frame_id": frame.frame_id, "scene_id": frame.scene_id, "source": frame.source,
        "region": frame.region, "driving_side": frame.driving_side, "timestamp": float(frame.timestamp),
        "labels": sorted(frame.labels), "latlon": None if frame.latlon is None else [float(v) for v in frame.latlon],
        "meta": frame.meta, "image_format": image_format, "cameras": cameras,
        "lanes_3d_types": [int(ln.type) for ln in frame.lanes_3d],
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # uncompressed: the arrays are small; images carry the bytes
    return {"header": json.dumps(header, default=_json_default), "arrays": buf.getvalue(), "images": b"".join(images)}


def decode_frame(record: Mapping[str, Any], with_images: bool = True, where: str = "shard record") -> Frame:
    """The :class:`Frame` of a shard record (``with_images=False`` skips image decoding: images are None);
    ``where`` names the record in errors (its prefix or chunk file and item)."""
    try:
        header = json.loads(str(record["header"]))
    except ValueError as e:
        raise ValueError(f"{where}: field 'header' is not JSON ({e}); the shard is truncated or corrupt, "
                         f"re-shard") from None
    if header.get("version") != VERSION:
        raise ValueError(f"shard record '{header.get('frame_id')}': field 'version' must be {VERSION}, found "
                         f"{header.get('version')}; re-shard with this visionpilot version")
    try:
        with np.load(io.BytesIO(bytes(record["arrays"])), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{where}, frame '{header.get('frame_id')}': field 'arrays' is not a readable .npz ({e}); "
                         f"the shard is truncated or corrupt, re-shard") from None
    blob = memoryview(bytes(record["images"])) if with_images else None
    offset, cameras = 0, []
    for i, cam in enumerate(header["cameras"]):
        n = int(cam["image_bytes"])
        image = None
        if blob is not None and n:
            image = _decode_image(blob[offset:offset + n], header["image_format"], cam["image_size"],
                                  f"{where}, frame '{header['frame_id']}', camera '{cam['name']}'")
        offset += n
        cameras.append(CameraView(
            name=cam["name"], intrinsics=arrays[f"cam{i}.intrinsics"], extrinsics=arrays[f"cam{i}.extrinsics"],
            image_size=tuple(cam["image_size"]), image=image, boxes_2d=arrays[f"cam{i}.boxes_2d"],
            classes_2d=arrays[f"cam{i}.classes_2d"], box_ids_2d=arrays[f"cam{i}.box_ids_2d"],
            visibility_2d=arrays[f"cam{i}.visibility_2d"],
            lanes_2d=[Lane(arrays[f"cam{i}.lane{j}"], t) for j, t in enumerate(cam["lane_types"])],
            privacy_boxes=arrays.get(f"cam{i}.privacy_boxes"), privacy_classes=arrays.get(f"cam{i}.privacy_classes")))
    boxes = Boxes3D(**{k: arrays[f"boxes_3d.{k}"] for k in ("centers", "sizes", "yaws", "classes", "track_ids",
                                                             "velocities")})
    return Frame(frame_id=header["frame_id"], scene_id=header["scene_id"], source=header["source"],
                 region=header["region"], driving_side=header["driving_side"], timestamp=header["timestamp"],
                 cameras=cameras, boxes_3d=boxes,
                 lanes_3d=[Lane(arrays[f"lane3d.{j}"], t) for j, t in enumerate(header["lanes_3d_types"])],
                 labels=frozenset(header["labels"]),
                 latlon=None if header["latlon"] is None else tuple(header["latlon"]), meta=header["meta"])


# -- where things live: local folders and object-store URLs --------------------------------------------------------


def is_url(path: str | os.PathLike[str]) -> bool:
    """An object-store URL (litdata's schemes), as opposed to a local path."""
    return str(path).startswith(_URL_SCHEMES)


def join(root: str | os.PathLike[str], *parts: str) -> str:
    """``root/part/...`` for a folder or a URL (no ``os.path`` on URLs: it would mangle ``s3://``)."""
    return "/".join([str(root).rstrip("/"), *parts])


def _provider(url: str, storage_options: Mapping[str, Any] | None) -> Any:
    # litdata's own object-store client (boto3 / google-cloud-storage / azure), already configured by the same
    # storage_options as its chunk uploads and downloads; a private module, so it is used in this one place only.
    from litdata.streaming.fs_provider import _get_fs_provider

    return _get_fs_provider(url, dict(storage_options or {}))


def write_json(path: str, obj: Any, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write JSON to a local file (atomically) or an object-store URL."""
    text = json.dumps(obj, indent=1) + "\n"
    if not is_url(path):
        from visionpilot.utils.io import write_text_atomic

        write_text_atomic(path, text)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        Path(local).write_text(text)
        _provider(path, storage_options).upload_file(local, path)


def remove_file(path: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Delete a local file or an object-store object if it exists."""
    if not is_url(path):
        Path(path).unlink(missing_ok=True)
        return
    provider = _provider(path, storage_options)
    if provider.exists(path):
        provider.delete_file_or_directory(path)


#: :func:`remove_tree`'s bound on delete calls for one prefix (S3 lists up to 1,000 keys per call: 10 M objects).
_MAX_DELETE_PASSES = 10_000


def remove_tree(path: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Delete a local folder or every object under an object-store prefix, if any."""
    if not is_url(path):
        if os.path.isdir(path):
            shutil.rmtree(path)
        return
    # The trailing '/': object stores delete by key prefix, and 'root/vi' (a region code) also prefixes
    # 'root/visionpilot.json'.
    prefix = path.rstrip("/") + "/"
    provider = _provider(path, storage_options)
    # litdata's S3 (and R2) delete removes the keys of one listing, which S3 caps at 1,000 (litdata 0.2.76): a region
    # of more chunks kept the rest, data the root should no longer hold. Delete until the prefix lists nothing.
    for _ in range(_MAX_DELETE_PASSES):
        provider.delete_file_or_directory(prefix)
        if provider.is_empty(prefix):
            return
    raise RuntimeError(f"{prefix}: objects are still there after {_MAX_DELETE_PASSES} deletes (up to 1,000 keys "
                       f"each); check the credentials' delete permission and remove them by hand")


def read_json(path: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """Read JSON from a local file or an object-store URL (FileNotFoundError for either when it is missing)."""
    if not is_url(path):
        with open(path) as f:
            return json.load(f)
    provider = _provider(path, storage_options)
    if not provider.exists(path):  # the clients raise their own errors (botocore's ClientError 404, ...)
        raise FileNotFoundError(f"{path} not found")
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        provider.download_file(path, local)
        with open(local) as f:
            return json.load(f)


# -- writing -------------------------------------------------------------------------------------------------------


def _is_shard_file(name: str) -> bool:
    """A file of a ``<region>/<split>/`` prefix: litdata's chunks and (per-worker) indexes, frames.json, temp files."""
    return (name.startswith("chunk-") and name.endswith(".bin")) or name.endswith("index.json") or \
        name == FRAMES_FILE or name.startswith(".")


def _is_prefix_folder(path: Path) -> bool:
    """A ``<region>`` folder as write_shards leaves it: split folders holding only shard files."""
    return all(split.is_dir() and all(f.is_file() and _is_shard_file(f.name) for f in split.iterdir())
               for split in path.iterdir())


def _earlier_regions(out: str, storage_options: Mapping[str, Any] | None) -> set[str]:
    """The region prefixes earlier shard runs may have left under ``out`` (finished: its metadata; killed: its
    :data:`WRITING_FILE`; a local folder is also listed), refusing a root that holds anything but shards."""
    regions: set[str] = set()
    for name in (META_FILE, WRITING_FILE):
        path = join(out, name)
        try:
            doc = read_json(path, storage_options)
        except FileNotFoundError:
            continue
        except (json.JSONDecodeError, UnicodeDecodeError):
            doc = None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            found = f"format {doc.get('format')!r}" if isinstance(doc, dict) else "a file that is not shard metadata"
            raise FileExistsError(f"{path}: expected the metadata of visionpilot shards (field 'format' "
                                  f"'{FORMAT}'), found {found}; action=shard's out must be a new folder or URL or "
                                  f"an earlier shard root: choose another out")
        regions.update(str(r) for r in doc.get("regions") or [])
    root = Path(out)
    if not is_url(out) and root.is_dir():
        foreign = []
        for entry in sorted(root.iterdir()):
            if entry.is_dir() and _is_prefix_folder(entry):
                regions.add(entry.name)
            elif entry.name not in (META_FILE, WRITING_FILE) and not entry.name.startswith("."):
                foreign.append(entry.name + "/" * entry.is_dir())
        if foreign:
            raise FileExistsError(f"{out}: holds {foreign[:5]}{' ...' if len(foreign) > 5 else ''}, which are not "
                                  f"shards; expected an empty folder or an earlier shard root ({META_FILE} and "
                                  f"<region>/<split>/ folders of chunk-*.bin, index.json, {FRAMES_FILE}), which "
                                  f"re-sharding replaces: choose another out")
    return regions


def _record(source: FrameSource, image_format: str, jpeg_quality: int, index: int) -> dict[str, Any]:
    return encode_frame(source.load(index), image_format, jpeg_quality)


def write_shards(source: FrameSource, refs: Sequence[FrameRef], manifest: SplitManifest, regions: Sequence[str],
                 out: str | os.PathLike[str], *, image_format: str = "png", jpeg_quality: int = 95,
                 chunk_bytes: str | int = "64MB", num_workers: int = 1, start_method: str | None = "fork",
                 storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the frames of ``regions`` as litdata chunks under ``out/<region>/<split>/``; return the metadata.

    Args:
        source: the frame source; ``refs`` its index (``source.index()``).
        manifest: the scene splits (stored in the metadata; readers use it as is).
        regions: the regions to write (each under its own prefix).
        out: a local folder or an object-store URL.
        image_format: ``png`` (lossless), ``jpeg`` (lossy, ``jpeg_quality``) or ``raw``.
        chunk_bytes: target chunk size; larger chunks mean fewer requests to an object store.
        num_workers: encoding processes per prefix (litdata ``optimize``; frames keep their source order).
        start_method: multiprocessing start method; ``fork`` (the default on Linux, as the DataLoader's) starts
            workers in milliseconds, ``spawn`` re-imports everything per worker (seconds).
        storage_options: object-store client options (e.g. ``{"endpoint_url": ...}``).
    """
    import litdata

    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"action=shard: field 'image_format' must be one of {list(IMAGE_FORMATS)}, "
                         f"found '{image_format}'")
    out = str(out)
    if not is_url(out):
        out = str(Path(out).resolve())
    parts: dict[str, dict[str, int]] = {}
    encode = partial(_record, source, image_format, int(jpeg_quality))
    # The root ends up holding exactly the regions written: an earlier run's regions that are not written again must
    # go (a region folder left behind would travel with the root, wherever its data may not). They are recorded
    # before anything is removed, so a run killed half-way leaves the next run the list to clear.
    clear = sorted(_earlier_regions(out, storage_options) | set(regions))
    odd = [r for r in clear if r in ("", ".", "..") or "/" in r or "\\" in r]
    if odd:  # each is deleted as out/<region>: never anything but a folder of the root
        raise ValueError(f"action=shard: region names must be plain folder names, found {odd} (in 'regions' or in "
                         f"the metadata of {out})")
    write_json(join(out, WRITING_FILE), {"format": FORMAT, "regions": clear}, storage_options)
    # The metadata is what makes a root readable, and it is written last: an earlier run's must go first, or a run
    # killed half-way through re-sharding would leave old metadata over a mix of old and new chunks.
    remove_file(join(out, META_FILE), storage_options)
    for region in clear:
        remove_tree(join(out, region), storage_options)
    for region in regions:
        parts[region] = {}
        for split in manifest.splits:
            chosen = manifest.select(refs, split, [region])
            parts[region][split] = len(chosen)
            if not chosen:
                continue
            prefix = join(out, region, split)
            litdata.optimize(fn=encode, inputs=[r.index for r in chosen], output_dir=prefix, chunk_bytes=chunk_bytes,
                             num_workers=max(1, min(int(num_workers), len(chosen))), mode="overwrite",
                             keep_data_ordered=True, reorder_files=False, verbose=False, start_method=start_method,
                             storage_options=dict(storage_options or {}))
            write_json(join(prefix, FRAMES_FILE), {"frames": [[r.frame_id, r.scene_id] for r in chosen]},
                       storage_options)
            log.info("sharded %d %s frames of region %s to %s", len(chosen), split, region, prefix)
    meta = {"format": FORMAT, "version": VERSION, "source": source.name, "camera_names": list(source.camera_names),
            "image_format": image_format, "regions": list(regions), "frames": parts, "manifest": manifest.to_dict()}
    members = getattr(source, "sources", None)
    names = getattr(source, "member_names", None)  # shards of a mixed source, re-sharded: the names they recorded
    if isinstance(members, Mapping):  # a mixed source: governance rules its frames (ids '<key>:<id>') by these names
        meta["members"] = {str(key): str(getattr(member, "name", source.name)) for key, member in members.items()}
    elif isinstance(names, Mapping):
        meta["members"] = {str(key): str(name) for key, name in names.items()}
    write_json(join(out, META_FILE), meta, storage_options)
    remove_file(join(out, WRITING_FILE), storage_options)
    return meta


def read_meta(root: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The metadata of a shard root, checked (a clear message for a folder that holds no shards)."""
    path = join(root, META_FILE)
    try:
        meta = read_json(path, storage_options)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: data.root must be the 'out' of visionpilot-data action=shard "
                                f"(the folder or URL holding {META_FILE} and one prefix per region; {META_FILE} is "
                                f"written last, so a shard run that did not finish leaves none)") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path}: fields 'format'/'version' must be '{FORMAT}'/{VERSION}, found "
                         f"'{meta.get('format')}'/{meta.get('version')}; re-shard with this visionpilot version")
    missing = [k for k in ("camera_names", "regions", "frames", "manifest") if k not in meta]
    if missing:
        raise ValueError(f"{path}: missing field(s) {missing}; the file was truncated or edited, re-shard")
    return meta
