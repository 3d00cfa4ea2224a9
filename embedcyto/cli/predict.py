"""``embedcyto predict``: a saved probe or a finished LoRA run on new images, to a CSV."""

from __future__ import annotations

import click


@click.command("predict")
@click.argument("source", type=click.Path(exists=True))
@click.option("--probe", "probe_dir", type=click.Path(file_okay=False), default=None,
              help="A probe saved by `embedcyto probe --save-model` (its method folder).")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None,
              help="A finished LoRA run folder (runs/lora/<dataset>/<model>/<mode>/seed-S).")
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True,
              help="CSV to write: path, predicted, error, p_<class> per class.")
@click.option("--calibrated", "--calibrate", "calibrated", is_flag=True,
              help="Temperature-scaled probabilities (temperature fitted on validation).")
@click.option("--weights", default=None, help="Backbone weights file (default: the usual search).")
@click.option("--weights-dir", default=None, help="Folder of local weights.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
def predict(source, probe_dir, run_dir, out, calibrated, weights, weights_dir, device,
            batch_size) -> None:
    """Predict the class of every image in SOURCE (a folder, or a CSV with a 'path' column).

    Images the model cannot read are listed in the CSV's error column with the same reason
    extraction gives, and get no prediction.
    """
    from embedcyto.fsio import atomic_write_text
    from embedcyto.predict import predict_with_probe, predict_with_run

    if (probe_dir is None) == (run_dir is None):
        raise click.UsageError("give exactly one of --probe DIR or --run DIR")
    kwargs = {"weights": weights, "weights_dir": weights_dir, "device": device,
              "batch_size": batch_size, "calibrated": calibrated}
    result = (predict_with_probe(probe_dir, source, **kwargs) if probe_dir
              else predict_with_run(run_dir, source, **kwargs))
    atomic_write_text(out, result.to_csv())
    bad = [(p, e) for p, e in zip(result.paths, result.errors) if e]
    click.echo(f"{len(result.paths) - len(bad)} images predicted into {out}")
    for path, error in bad:
        click.echo(f"not read: {path}: {error}", err=True)
