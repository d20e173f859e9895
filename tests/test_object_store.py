"""Inputs and outputs in an object store: a real S3-compatible server (moto, server mode) on loopback."""

import io
import tarfile

import pytest

from vid2pair.pipeline.config import load_config
from vid2pair.pipeline.io import read_index, read_rejects
from vid2pair.pipeline.runners import build
from vid2pair.pipeline.synthetic import make_demo_corpus
from vid2pair.pipeline.verify import verify_output

moto_server = pytest.importorskip("moto.server", reason="moto[server] is part of the test extra")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    import os

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket="clips")
    client.create_bucket(Bucket="out")
    d = tmp_path_factory.mktemp("s3src")
    paths = make_demo_corpus(d, n_static=2, n_moving_camera=1, seed=5)
    for p in paths:
        client.upload_file(str(p), "clips", f"videos/{p.name}")
    client.put_object(
        Bucket="clips",
        Key="list.txt",
        Body=("\n".join(f"s3://clips/videos/{p.name}" for p in paths) + "\ns3://clips/videos/gone.mp4\n"),
    )
    yield client, d, paths
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _cfg():
    return load_config(
        "demo", ["runner.name=local", "runner.progress=false", "collage.enabled=false", "track.enabled=false"]
    )


def test_build_from_bucket_to_bucket(s3, tmp_path):
    client, local_dir, paths = s3
    s = build(_cfg(), "s3://clips/videos/", "s3://out/run1", log_summary=False)
    assert s["inputs"] == 3 and s["clips_with_samples"] == 2 and s["samples"] == 6
    keys = client.list_objects_v2(Bucket="out", Prefix="run1/")["Contents"]
    names = {k["Key"] for k in keys}
    assert {"run1/summary.json", "run1/run.json"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    idx = read_index("s3://out/run1")
    assert len(idx) == 6 and idx["source"].str.startswith("s3://clips/videos/").all()
    ok, report = verify_output("s3://out/run1")
    assert ok, report
    # read a shard back from the bucket with plain tarfile
    shard = idx["shard"].iloc[0]
    body = client.get_object(Bucket="out", Key=f"run1/shards/{shard}")["Body"].read()
    members = tarfile.open(fileobj=io.BytesIO(body)).getnames()
    assert any(m.endswith(".src.jpg") for m in members)
    # as many candidate pairs as from local copies of the same files, and the same clips rejected.
    # Which pairs are drawn, and so which pass the quality rules, differs: the clip identity (the
    # seed of the pair draw) hashes the URI, and the local tmp dir changes from run to run
    s_local = build(_cfg(), str(local_dir), tmp_path, log_summary=False)

    def candidates(x):
        return x["samples"] + x["rejects_by_level"].get("pair", 0)

    assert candidates(s_local) == candidates(s) >= 6 and s_local["clips_rejected"] == s["clips_rejected"]


def test_list_in_bucket_with_missing_object_and_resume(s3):
    s = build(_cfg(), "s3://clips/list.txt", "s3://out/run2", log_summary=False)
    assert s["inputs"] == 4 and s["all_inputs_accounted"]
    rej = read_rejects("s3://out/run2")
    gone = rej[rej.source == "s3://clips/videos/gone.mp4"]
    assert list(gone.reason) == ["not_found"]
    again = build(_cfg(), "s3://clips/list.txt", "s3://out/run2", log_summary=False)  # resume: nothing to do
    assert again["new_samples_this_run"] == 0 and again["samples"] == s["samples"]


def test_an_output_bucket_that_is_missing_fails_before_any_work(s3, tmp_path):
    """A missing bucket is an error naming the output before anything is read or written."""
    from vid2pair.pipeline.cli import main
    from vid2pair.pipeline.storage import OutputError, check_writable

    with pytest.raises(OutputError, match=r"s3://no-such-bucket/out: cannot write there"):
        check_writable("s3://no-such-bucket/out")
    check_writable("s3://out/fine")  # an existing bucket is fine
    assert (
        main(
            [
                "build",
                "--config",
                "demo",
                "--input",
                "s3://clips/list.txt",
                "--output",
                "s3://no-such-bucket/o",
                "--runner",
                "local",
                "--no-progress",
            ]
        )
        == 2
    )


def test_ray_workers_write_the_shards_into_the_bucket(s3):
    """The Ray runner on an object-store output: the workers stage each sample's members in the
    bucket and a Ray task writes each shard there (runner.shard_writers auto -> workers); the shards
    equal the local runner's, byte for byte, and no staging is left. A fresh process, so that its
    private Ray's workers see the store's endpoint in their environment."""
    import os
    import subprocess
    import sys

    client = s3[0]
    build(_cfg(), "s3://clips/list.txt", "s3://out/local3", log_summary=False)
    opts = ["--set", "collage.enabled=false", "--set", "track.enabled=false", "--set", "runner.num_cpus=2"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vid2pair.pipeline.cli",
            "build",
            "--config",
            "demo",
            "--input",
            "s3://clips/list.txt",
            "--output",
            "s3://out/ray3",
            "--runner",
            "ray",
            "--no-progress",
            *opts,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    assert r.returncode == 0, r.stderr[-3000:]

    def tars(prefix):
        objs = client.list_objects_v2(Bucket="out", Prefix=prefix)["Contents"]
        return {
            o["Key"].rsplit("/", 1)[1]: client.get_object(Bucket="out", Key=o["Key"])["Body"].read()
            for o in objs
            if o["Key"].endswith(".tar")
        }, [o["Key"] for o in objs]

    local, _ = tars("local3/shards/")
    ray_tars, _ = tars("ray3/shards/")
    assert local and ray_tars == local
    _, everything = tars("ray3/")
    assert not [k for k in everything if "/_staging/" in k or k.endswith(".tmp")]
