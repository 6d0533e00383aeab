"""The synthetic datasets as torchreid image datasets ('synthperson', 'synthperson_b'), generated on first use."""
import os.path as osp

from ... import compat
from .generation import ensure
from .spec import spec_for

__all__ = ['SynthPerson', 'SynthPersonB', 'DATASETS']

ImageDataset = compat.torchreid_base().data.ImageDataset
Market1501 = compat.torchreid_base().data.datasets.Market1501

_FOREIGN_KWARGS = ('split_id', 'cuhk03_labeled', 'cuhk03_classic_split', 'market1501_500k')


class SynthPerson(Market1501):
    """Synthetic Market-1501-style dataset 'synthperson' (style 'a'), generated on first use."""

    dataset_dir = 'synthperson'
    dataset_url = None

    def __init__(self, root='', **kwargs):
        # Market1501.__init__ is skipped on purpose: it would try to download and warn about the layout.
        self.root = osp.abspath(osp.expanduser(root))
        name = type(self).dataset_dir
        self.dataset_dir = ensure(self.root, name, spec_for(name))
        self.data_dir = self.dataset_dir
        self.train_dir = osp.join(self.data_dir, 'bounding_box_train')
        self.query_dir = osp.join(self.data_dir, 'query')
        self.gallery_dir = osp.join(self.data_dir, 'bounding_box_test')
        for key in _FOREIGN_KWARGS:
            kwargs.pop(key, None)
        train = self.process_dir(self.train_dir, relabel=True)
        query = self.process_dir(self.query_dir, relabel=False)
        gallery = self.process_dir(self.gallery_dir, relabel=False)
        ImageDataset.__init__(self, train, query, gallery, **kwargs)


class SynthPersonB(SynthPerson):
    """Synthetic dataset 'synthperson_b' (style 'b': other cameras, light, clothes and people)."""

    dataset_dir = 'synthperson_b'


DATASETS = {'synthperson': SynthPerson, 'synthperson_b': SynthPersonB}
