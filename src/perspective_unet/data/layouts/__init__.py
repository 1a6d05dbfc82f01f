"""Dataset layouts: one class per on-disk format, its reader and its writer side by side.

Readable layouts (:class:`~perspective_unet.data.layouts.base.DatasetLayout`; training, evaluation and planning read
them): ``prepared`` (:mod:`.prepared`, what ``perspective-unet prepare`` writes), TransUNet's Synapse files
(:mod:`.synapse`) and MT-UNet's ACDC files (:mod:`.acdc`). Raw formats
(:class:`~perspective_unet.data.layouts.raw.RawDataset`; converted into the prepared layout): nnU-Net raw
(:mod:`.nnunet`), raw Synapse (:mod:`.synapse`), raw ACDC (:mod:`.acdc`) and folders of pictures (:mod:`.pictures`).
:func:`~perspective_unet.data.layouts.detect.open_dataset` decides which layout a folder is in;
:class:`~perspective_unet.data.layouts.info.DatasetInfo` is what a dataset is.
"""
