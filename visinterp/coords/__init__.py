"""The coordinate-MLP job (`visinterp scene-features`): SAEs on a fitted coordinate MLP's hidden
layer, checked against the scene's exact factors. `acts` builds the windows, `run` is the job,
`figures` its pictures, `view` its notebook view."""
