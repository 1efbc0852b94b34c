"""`rayft k8s`: KubeRay manifests for a run or serving config, rendered by the Helm chart helm/rayft.

    rayft k8s render run.yaml --set storage.uri=s3://bucket/rayft -o sft.yaml && kubectl apply -f sft.yaml
    rayft k8s values serve.yaml --set secrets.apiKey.name=chat-key > chat.yaml
    helm install chat helm/rayft -f chat.yaml

The values and the rendering are rayft/k8s.py's.
"""

from __future__ import annotations

import click

from rayft.k8s import KINDS, build_values, dump_values, release_name, render, to_yaml_stream

_config_arg = click.argument("config_path", type=click.Path(exists=True, dir_okay=False))
_options = [
    click.option(
        "--kind",
        type=click.Choice(KINDS),
        help="What to make [default: service for a serving config, "
        "tune for a run with a tune: section, else job]. cluster: a long-lived RayCluster.",
    ),
    click.option(
        "-f",
        "--values",
        "values_files",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False),
        help="A YAML of chart values over the config's (repeatable; see helm/rayft/values.yaml).",
    ),
    click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="KEY=VALUE",
        help="A chart value, as `helm --set` takes it: storage.uri=s3://b/runs, workers[0].memory=32Gi (repeatable).",
    ),
]


def _with_options(fn):
    for option in reversed(_options):
        fn = option(fn)
    return _config_arg(fn)


@click.group("k8s")
def k8s_group() -> None:
    """Kubernetes (KubeRay) manifests for a run or serving config, from the Helm chart helm/rayft."""


@k8s_group.command("render")
@_with_options
@click.option(
    "--name",
    help="Release name: the RayJob/RayService/RayCluster's name [default: output.name or the serving config's name].",
)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Write the manifests here instead of printing them (a new file, or an existing one with --overwrite).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT when it exists.")
def render_command(
    config_path: str,
    kind: str | None,
    values_files: tuple[str, ...],
    sets: tuple[str, ...],
    name: str | None,
    namespace: str,
    output: str | None,
    overwrite: bool,
) -> None:
    """Render CONFIG_PATH (a run or serving config) into KubeRay manifests: a RayJob for a run (`rayft train`),
    a RayJob for a sweep (`rayft tune`), a RayService for a serving config, or --kind cluster.

    Example: rayft k8s render run.yaml --set storage.uri=s3://bucket/rayft --set storage.credentialsSecret=s3
    | kubectl apply -f -
    """
    from rayft_core.ownership import check_new_file, write_file_atomically

    if output:
        check_new_file(output, overwrite, inputs=(config_path, *values_files))
    values = build_values(config_path, kind, values_files, sets)
    text = to_yaml_stream(render(values, name or release_name(config_path, values), namespace))
    if output:
        write_file_atomically(output, text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@k8s_group.command("values")
@_with_options
def values_command(config_path: str, kind: str | None, values_files: tuple[str, ...], sets: tuple[str, ...]) -> None:
    """Print the chart values for CONFIG_PATH, checked by rendering them, for `helm install NAME helm/rayft -f`."""
    values = build_values(config_path, kind, values_files, sets)
    render(values, release_name(config_path, values))
    click.echo(dump_values(values), nl=False)
