import StorkPlacement
import Testing

@Suite("FarmHash Fingerprint32")
struct FarmHashTests {
    /// Reference values from `pyfarmhash` 0.5.1 (`farmhash.fingerprint32`), which wraps Google's C++ FarmHash.
    @Test(
        "known strings",
        arguments: [
            ("", 3_696_677_242 as UInt32),
            ("a", 1_016_544_589),
            ("hello", 2_039_911_270),
            ("127.0.0.1:3000", 955_462_725),
            ("127.0.0.1:30000", 1_854_233_723),
            ("resource-1", 112_418_108),
            ("127.0.0.1:3000;127.0.0.1:3001;127.0.0.1:3002", 742_371_003),
            ("The quick brown fox jumps over the lazy dog", 3_969_483_552),
            ("é", 1_973_972_843),
            ("héllo wörld ünïcode", 1_272_318_513),
        ]
    )
    func knownStrings(input: String, expected: UInt32) {
        #expect(FarmHash.fingerprint32(input) == expected)
        #expect(FarmHash.fingerprint32(Array(input.utf8)) == expected)
    }

    /// A 100-byte string: the > 24 byte path with several 20-byte rounds.
    @Test func hundredByteString() {
        let input = String(decoding: (0..<100).map { UInt8(ascii: "a") + UInt8($0 % 26) }, as: UTF8.self)
        #expect(input.utf8.count == 100)
        #expect(FarmHash.fingerprint32(input) == 281_858_239)
    }

    /// Every length from 0 to 130 bytes (all four length classes and every tail alignment), with bytes above 0x7F
    /// (the 0–4 byte path sign-extends them), plus 257 and 1000 bytes.
    @Test func everyLengthUpTo130() {
        let pattern = (0..<1000).map { UInt8(truncatingIfNeeded: $0 * 167 + 13) }
        for (length, value) in Self.prefixFingerprints.enumerated() {
            #expect(FarmHash.fingerprint32(pattern[0..<length]) == value, "length \(length)")
        }
        #expect(FarmHash.fingerprint32(pattern[0..<257]) == 1_883_140_716)
        #expect(FarmHash.fingerprint32(pattern) == 3_469_238_665)
    }

    /// Non-contiguous collections take the copying path and agree with the contiguous one.
    @Test func nonContiguousCollection() {
        let bytes = Array("resource-1".utf8)
        #expect(FarmHash.fingerprint32(bytes.lazy.map { $0 }) == 112_418_108)
    }

    /// `fingerprint32(pattern[0..<n])` for n in 0...130, pattern[i] = (167·i + 13) mod 256.
    static let prefixFingerprints: [UInt32] = [
        3_696_677_242, 1_372_234_085, 2_565_216_071, 3_641_870_481, 2_684_069_690, 3_468_692_604,
        2_739_612_091, 1_806_461_209, 12_669_709, 940_819_031, 1_537_959_385, 856_117_800,
        1_703_605_352, 3_588_783_163, 550_512_868, 3_052_966_984, 3_198_265_453, 2_400_099_264,
        2_382_844_133, 3_131_068_471, 523_843_759, 2_563_334_702, 816_355_487, 133_676_434,
        3_057_320_666, 4_148_311_032, 3_615_538_520, 3_703_931_187, 1_074_131_201, 3_696_287_207,
        2_525_949_126, 631_384_372, 3_304_869_397, 295_397_044, 742_738_731, 718_908_039,
        2_229_493_833, 3_512_773_728, 4_184_559_149, 399_843_580, 4_225_747_438, 518_888_524,
        586_740_005, 486_024_781, 1_665_337_943, 3_359_315_942, 2_523_275_222, 3_167_552_003,
        2_551_360_695, 3_161_717_180, 2_570_872_250, 269_799_155, 1_636_493_532, 1_416_123_646,
        749_387_259, 438_542_994, 2_729_350_828, 4_191_870_118, 3_496_128_942, 3_962_210_537,
        1_024_177_434, 4_037_485_650, 155_427_988, 2_190_742_130, 568_730_915, 2_051_414_193,
        2_725_466_106, 2_183_510_801, 711_591_348, 2_960_838_736, 351_598_916, 1_737_248_036,
        249_716_564, 229_274_547, 2_964_958_421, 3_901_235_660, 3_655_636_450, 1_409_057_248,
        4_111_143_530, 3_929_388_755, 1_702_584_155, 1_996_949_845, 3_080_533_604, 1_762_607_716,
        3_853_039_554, 703_078_634, 1_744_353_789, 2_747_650_962, 2_501_883_411, 2_963_820_080,
        1_848_370_285, 4_276_516_165, 2_377_906_551, 2_763_688_451, 1_547_936_152, 1_442_834_982,
        1_528_360_642, 3_955_100_503, 3_289_321_479, 1_865_811_402, 3_764_954_092, 1_060_541_300,
        3_104_088_586, 493_637_613, 2_001_944_173, 2_254_642_089, 2_183_979_964, 3_951_410_259,
        3_482_061_206, 3_506_066_510, 3_433_519_983, 258_995_854, 2_903_200_524, 4_018_812_450,
        3_280_633_288, 2_452_940_485, 565_626_967, 2_360_190_234, 2_391_466_636, 1_467_883_887,
        2_315_325_604, 4_102_137_476, 236_213_746, 2_887_144_057, 2_590_750_820, 577_347_344,
        3_069_543_964, 256_540_800, 2_447_949_761, 26_115_396, 1_967_865_461,
    ]
}
