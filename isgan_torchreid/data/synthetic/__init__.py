"""Synthetic person re-identification datasets in the Market-1501 layout.

A person's IDENTITY is what they wear: shirt colour and pattern (plain, stripes, checks), a front
print, sleeve length, trousers / shorts / skirt, shoes, hair colour and length, hat, backpack or
shoulder bag, body build and arm swing. Everything else is NUISANCE and varies per image and per
camera: viewpoint (front / back / side, each camera prefers one, and a backpack seen from the back
hides the shirt), walking pose, lean, scale and shift, the camera's scene and per-image clutter,
occluders, illumination gain / colour cast / light gradient, low resolution, blur, noise and JPEG
quality. Two styles make two "cities" for cross-dataset tests: 'a' (outdoor daylight, saturated
clothes) and 'b' (indoor fluorescent light, muted clothes, lower image quality).

Rendering uses numpy + PIL only and one seeded ``np.random.Generator`` per drawn thing
(``np.random.default_rng((seed, stream, ...))``), so the same :class:`SynthSpec` gives
byte-identical files in any order. :func:`generate` renders into a hidden sibling folder and
renames it into place, so an interrupted run never leaves a half-written dataset behind.

Layout under ``<root>/<name>/`` (torchreid's Market-1501 parser reads it unchanged)::

    bounding_box_train/  {pid:04d}_c{cam}s1_{frame:06d}_00.jpg   train ids
    bounding_box_test/   test ids, distractors 0000_c..., junk -1_c... (dropped by the parser)
    query/               one image per (test id, camera) with another image of that id in the gallery
    factors.json         each image's nuisance factors: {relative path: {"camera": c, "view": front | back |
                         side | null (no person), "occluded": bool}}, what the disentanglement benchmark
                         checks G's swaps against (any Market-layout dataset may carry such a file)
    spec.json            the spec it was made from (plus the generator versi

One concept per module: :mod:`.spec` (what a dataset is made from: :class:`~.spec.SynthSpec`, the styles, the
registered default spec of each name; light, so that the config can check DATA.SYNTH), :mod:`.render` (drawing one
image), :mod:`.generation` (the file layout: planning, rendering every image, atomic replacement, ``ensure``) and
:mod:`.datasets` (the torchreid dataset classes). This package imports none of them, so importing one does not load
the others.
"""
