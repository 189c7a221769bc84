import pytest

from tests.conftest import shared_path


@pytest.fixture(scope="session")
def reference_store(tmp_path_factory):
    """(fixture folder, float32 feature store of its toy pickles)."""
    from vtlm_fairseq.features.reference_features import import_reference_pickles

    root = shared_path("fixtures", "reference_vtlm")
    store = tmp_path_factory.mktemp("reference_store") / "features.h5"
    import_reference_pickles(root / "toy_data" / "features", store, dtype="float32")
    return root, store
