import pytest

from simmpnet.models import DMWLA, WLDSchedule


@pytest.mark.parametrize(
    "change, k",
    [(0.0, 50), (0.2, 40), (-0.2, 60), (-0.6, 50), (0.6, 50), (0.3, 35), (-0.5, 75), (0.5, 25), (0.25, 37)],
)
def test_k_for_loss_change(change, k):
    assert WLDSchedule([]).k_for_change(change) == k


@pytest.mark.parametrize("change, k", [(0.34, 32), (-0.16, 57)])
def test_k_truncates_as_the_authors_int_does(change, k):
    # (0.5 - 0.17) * 100 is 32.99999999999999 in binary floating point; the authors' int() gives 32
    assert WLDSchedule([]).k_for_change(change) == k


def test_step_uses_previous_minus_current_and_start_epoch():
    blocks = [DMWLA(4, feature_dim=4, num_k=2, pool_size=100) for _ in range(2)]
    untouched = DMWLA(4, feature_dim=4, num_k=2, pool_size=100)
    schedule = WLDSchedule(blocks, start_epoch=2)
    assert schedule.step(1.0, epoch=0) == 50
    assert schedule.step(0.8, epoch=1) == 50  # before the start epoch
    assert schedule.step(0.6, epoch=2) == 50  # the start epoch only records its losses
    assert schedule.step(0.7, epoch=2) == 50
    assert schedule.step(0.5, epoch=3) == 40  # D = 0.7 - 0.5 = 0.2, the start epoch's last loss
    assert all(b.update_count == 40 for b in blocks)
    assert untouched.update_count == 50  # blocks the schedule is not given keep their K
    assert schedule.step(0.7, epoch=3) == 60
    # a non-finite loss changes nothing: K stays, and it is not remembered as the previous loss
    assert schedule.step(float("nan"), epoch=3) == 60
    assert schedule.previous_loss == 0.7
    state = schedule.state_dict()
    other = WLDSchedule([untouched], start_epoch=2)
    other.load_state_dict(state)
    assert other.previous_loss == 0.7 and untouched.update_count == 60
    assert other.step(0.6, epoch=4) == 45
