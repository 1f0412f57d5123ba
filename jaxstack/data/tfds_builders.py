"""TensorFlow Datasets builders for local corpora, prepared as ArrayRecord and read without TensorFlow.

:class:`LocalTextCorpus` is a ``tfds.core.GeneratorBasedBuilder`` whose builder config names local
JSONL / Parquet / ArrayRecord files per split. Preparing it writes a versioned, documented TFDS
dataset (``dataset_info.json``, ``features.json``, ``*.array_record-*`` shards) under ``data_dir``;
reading it goes through ``tfds.data_source`` (random access, no TensorFlow):

    prepare_local_corpus("web", {"train": "web/*.jsonl", "validation": "web_val.jsonl"}, data_dir=D)
    docs = tfds_text_source("web", "train", data_dir=D)   # grain.MapDataset of str

No TensorFlow is needed because (i) the builder is prepared with ``file_format="array_record"``
(the default, tfrecord, needs TF to read), (ii) ``_info`` builds ``tfds.core.DatasetInfo(builder=self,
...)`` directly (``dataset_info_from_configs`` looks for package metadata files) and (iii) reading
uses ``tfds.data_source`` / ``builder.as_data_source`` rather than ``as_dataset`` (which imports TF).
The builder also sets ``code_path = None``: tfds would otherwise look for a checksums file next to
a package builder via ``importlib_resources``, which tfds 4.9.10 does not declare.
GCS lookups are switched off explicitly (``try_gcs=False``, ``try_download_gcs=False``).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import grain

from jaxstack.data.sources import resolve_paths, text_source

BUILDER_NAME = "local_text_corpus"


def _tfds():
    import tensorflow_datasets as tfds

    return tfds


def _builder_class():
    """The builder class, created on first use (importing tfds costs ~0.5 s and registers the name)."""
    global _BUILDER
    if _BUILDER is not None:
        return _BUILDER
    tfds = _tfds()

    class LocalCorpusConfig(tfds.core.BuilderConfig):
        """files: split name -> path / glob / directory; format: see ``text_source``."""

        def __init__(self, *, files: Mapping[str, str] | None = None, format: str = "auto",
                     text_field: str = "text", **kwargs):
            super().__init__(**kwargs)
            self.files = dict(files or {})
            self.format = format
            self.text_field = text_field

    class LocalTextCorpus(tfds.core.GeneratorBasedBuilder):
        """Documents ``{"text": Text}`` from local files, one split per entry of the config's ``files``."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "Local text corpus (jaxstack)."}
        BUILDER_CONFIGS = [LocalCorpusConfig(name="default", description="no files; pass a config")]
        # tfds looks for a checksums file beside the builder's code through `importlib_resources`
        # (not a tfds dependency) when the builder lives in a package; this builder downloads
        # nothing, so it has no code-path metadata.
        code_path = None

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"Local text corpus {self.builder_config.name!r} prepared by jaxstack.",
                features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            )

        def _split_generators(self, dl_manager):
            config = self.builder_config
            if not config.files:
                raise ValueError(f"tfds builder {config.name!r}: no files; expected files={{'train': PATH, ...}}")
            return {split: self._generate_examples(paths) for split, paths in config.files.items()}

        def _generate_examples(self, paths):
            config = self.builder_config
            documents = text_source(paths, format=config.format, text_field=config.text_field)
            for index in range(len(documents)):
                yield index, {"text": documents[index]}

    LocalTextCorpus.Config = LocalCorpusConfig
    _BUILDER = LocalTextCorpus
    return _BUILDER


_BUILDER = None


def prepare_local_corpus(name: str, files: Mapping[str, str], *, data_dir: str | pathlib.Path,
                         format: str = "auto", text_field: str = "text", version: str = "1.0.0"):
    """Prepares (once; a prepared dataset is reused) the TFDS dataset ``local_text_corpus/<name>`` from
    local ``files`` (split -> path/glob/directory) as ArrayRecord under ``data_dir``. Returns the builder.

    Raises FileNotFoundError naming a missing file before anything is written."""
    for paths in files.values():
        resolve_paths(paths)  # fail early, naming the missing path
    tfds = _tfds()
    builder_class = _builder_class()
    config = builder_class.Config(name=name, files=files, format=format, text_field=text_field, version=version)
    builder = builder_class(config=config, data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return builder


def tfds_text_source(name: str, split: str, *, data_dir: str | pathlib.Path) -> grain.MapDataset:
    """``grain.MapDataset`` of document texts (str) of a prepared ``local_text_corpus/<name>`` split,
    read through ``tfds.data_source`` (ArrayRecord, random access, no TensorFlow)."""
    tfds = _tfds()
    _builder_class()
    root = pathlib.Path(data_dir) / BUILDER_NAME / name
    if not root.exists():
        raise FileNotFoundError(f"tfds: {root} does not exist; prepare it with prepare_local_corpus({name!r}, ...)")
    source = tfds.data_source(f"{BUILDER_NAME}/{name}", data_dir=str(data_dir), split=split, try_gcs=False)
    return grain.MapDataset.source(source).map(_decode_text)


def _decode_text(example) -> str:
    return example["text"].decode("utf-8")
