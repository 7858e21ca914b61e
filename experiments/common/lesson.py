"""What the lesson printed (``../shared/seed.md``): every value here is the lesson's, copied from its text, and is
shown in reports only labelled as such, next to the value computed in the run.
"""

from __future__ import annotations

# BatchNorm1d's running statistics, momentum 0.3, two iterations (the 2d/3d demos print only shapes).
BN_RUNNING_STATS = {
    "bn1d": {"running_mean": [[0.3, 0.6, 0.9, 1.2, 1.5], [0.51, 1.02, 1.53, 2.04, 2.55]],
             "running_var": [[0.7] * 5, [0.49] * 5],
             "hand_feature2": [{"running_mean": 0.6, "running_var": 0.7},
                               {"running_mean": 1.02, "running_var": 0.48999999999999994}]},
    "bn2d": {"shape": [6]},
    "bn3d": {"shape": [4]},
}


# The 100-layer MLP's stds the lesson printed: {config: {layer: std}}, and the layer of "output is nan in N layers".
MLP_STDS: dict[str, dict[int, float]] = {
    "default": {0: 0.3342404067516327, 1: 0.13787388801574707, 2: 0.05783054977655411,
                3: 0.02498556487262249, 4: 0.009679116308689117, 5: 0.0040797945111989975,
                6: 0.0016723505686968565, 7: 0.000768698868341744, 93: 7.51512610937515e-38,
                94: 2.6169094678434883e-38, 95: 1.1516209894049713e-38, 96: 4.344910860036386e-39,
                97: 1.5943525511579185e-39, 98: 5.721221370145363e-40, 99: 2.4877251637158477e-40},
    "normal": {0: 9.35224723815918, 1: 112.47123718261719, 2: 1322.805419921875, 3: 14569.419921875,
               4: 154672.703125, 5: 1834037.125, 6: 18807968.0, 7: 209552880.0,
               28: 3.221297392084588e30, 29: 3.530939139138446e31, 30: 4.525336236359181e32,
               31: 4.714992054712809e33, 32: 5.369568386632447e34, 33: 6.712290740934239e35,
               34: 7.451081630611702e36},
    "kaiming": {0: 0.826629638671875, 1: 0.878681480884552, 2: 0.9134420156478882, 3: 0.8892467617988586,
                4: 0.8344276547431946, 5: 0.87453693151474, 6: 0.792696475982666, 7: 0.7806451916694641,
                92: 0.6094536185264587, 93: 0.6019036173820496, 94: 0.595414936542511, 95: 0.6624482870101929,
                96: 0.6377813220024109, 97: 0.6079217195510864, 98: 0.6579239368438721,
                99: 0.6668398976325989},
    "bn_kaiming": {0: 0.5872595906257629, 1: 0.579325795173645, 2: 0.5757012367248535, 3: 0.5840616822242737,
                   4: 0.5781518220901489, 5: 0.5856173634529114, 6: 0.5862171053886414,
                   95: 0.5735476016998291, 96: 0.5807774662971497, 97: 0.5868753790855408,
                   98: 0.5801646113395691, 99: 0.5738694667816162},
    "bn_default": {0: 0.5751240849494934, 1: 0.5803307890892029, 2: 0.5825020670890808, 3: 0.5823132395744324,
                   97: 0.5814812183380127, 98: 0.5802980661392212, 99: 0.5824452638626099},
}
MLP_FIRST_NAN = {"normal": 35}

# The lesson's final LeNet epoch (Training/Valid lines of epoch 009). Its "Valid" Acc repeats the training
# accuracy in every epoch (a printing slip in the lesson's script), so only its valid *loss* is informative.
# The lesson's data set is not ours (its own 2-class 32x32 images; we use cat/dog photos).
LENET_FINAL_EPOCH = {"plain": {"train_loss": 0.4774, "train_acc": 0.8750, "valid_loss": 0.4023},
                     "init": {"train_loss": 0.0133, "train_acc": 0.9938, "valid_loss": 0.0000},
                     "bn": {"train_loss": 0.0365, "train_acc": 0.9875, "valid_loss": 0.0015}}
