"""Region styles of the synthetic world: how roads, traffic and scenery differ per country.

The marking conventions (driving side, centre/divider/edge/kerb line types, lane width, dash lengths) come from
the regions registry (:mod:`visionpilot.data.regions`); this file adds what the renderer needs on top: how often
each convention appears, the road-user mix, vehicle sizes and colours, surfaces, scenery and weather. Every value
here is documented per region in docs/regions.md; tests check that the differences show up in rendered data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from visionpilot.data.regions import REGIONS, Region


@dataclass(frozen=True)
class RegionStyle:
    """Sampling distributions for one region. Probabilities need not be normalised."""

    region: Region
    centre_line_weights: tuple[float, ...]  # aligned with region.centre_lines
    lanes_per_direction: dict[int, float]  # count -> weight
    lane_width_jitter: float  # std of the lane width around region.lane_width_m (m)
    edge_line_prob: float  # probability that the edge line is painted (region.edge_line)
    kerb_line_prob: float  # probability of kerbside lines (region.kerb_lines) on the ego side
    marking_wear: tuple[float, float]  # range of paint opacity (1 = fresh)
    shoulder_m: tuple[float, float]  # paved shoulder beyond the edge line
    road_users: dict[str, float]  # class -> weight for vehicles in lanes (car, truck, bus, two_wheeler)
    traffic_density: tuple[float, float]  # vehicles per 100 m of lane
    shoulder_two_wheelers: float  # expected two-wheelers per 100 m riding on the shoulder
    pedestrians_per_100m: tuple[float, float]
    cone_prob: float  # probability of road works (a row of cones) in a scene
    parked_prob: float  # probability of parked cars along the ego side's kerb, where no kerb lines restrict it
    vehicle_scale: float  # multiplies vehicle lengths/widths (US pick-ups and SUVs, JP kei cars)
    double_decker_prob: float  # share of buses that are double-deckers (4.4 m tall)
    car_colors: dict[tuple[int, int, int], float]  # RGB -> weight
    asphalt: tuple[tuple[int, int, int], ...]  # road surface colours to choose from
    concrete_prob: float  # probability of a light concrete surface instead of asphalt
    roadside: tuple[tuple[int, int, int], ...]  # verge/sidewalk colours to choose from
    urban_prob: float  # probability of an urban scene (buildings, sidewalks) vs rural (trees, verges)
    haze_prob: float  # probability of haze/smog in a scene
    time_of_day: dict[str, float] = field(
        default_factory=lambda: {"day": 0.6, "overcast": 0.18, "dusk": 0.12, "night": 0.10}
    )
    sign_colors: tuple[tuple[int, int, int], ...] = ((20, 90, 170), (245, 245, 245))
    speed_mps: tuple[float, float] = (8.0, 20.0)  # ego speed range
    city_latlon: tuple[float, float] = (0.0, 0.0)  # where scenes are placed on the map


_SILVER, _WHITE, _BLACK, _GREY = (175, 178, 182), (235, 235, 232), (25, 25, 28), (105, 108, 112)
_RED, _BLUE, _DARKBLUE, _GREEN, _BEIGE = (165, 25, 30), (40, 80, 160), (25, 35, 70), (40, 90, 55), (200, 185, 150)
_YELLOW_TAXI, _GREEN_YELLOW = (240, 190, 20), (140, 190, 40)

STYLES: dict[str, RegionStyle] = {
    s.region.code: s
    for s in (
        RegionStyle(
            REGIONS["us"], centre_line_weights=(0.7, 0.3), lanes_per_direction={1: 0.35, 2: 0.4, 3: 0.25},
            lane_width_jitter=0.1, edge_line_prob=0.95, kerb_line_prob=0.0, marking_wear=(0.75, 1.0),
            shoulder_m=(0.5, 2.5), road_users={"car": 0.74, "truck": 0.2, "bus": 0.03, "two_wheeler": 0.03},
            traffic_density=(2.0, 5.0), shoulder_two_wheelers=0.0, pedestrians_per_100m=(0.5, 3.0), cone_prob=0.25,
            parked_prob=0.2, vehicle_scale=1.12, double_decker_prob=0.0,
            car_colors={_WHITE: 0.25, _BLACK: 0.2, _SILVER: 0.15, _GREY: 0.15, _RED: 0.1, _BLUE: 0.1,
                        _YELLOW_TAXI: 0.05},
            asphalt=((58, 58, 60), (78, 78, 80)), concrete_prob=0.3, roadside=((125, 120, 80), (95, 115, 60)),
            urban_prob=0.35, haze_prob=0.1, sign_colors=((0, 110, 60), (245, 245, 245), (250, 200, 0)),
            speed_mps=(10.0, 25.0), city_latlon=(42.336, -71.057),
        ),
        RegionStyle(
            REGIONS["cn"], centre_line_weights=(0.45, 0.35, 0.2), lanes_per_direction={1: 0.2, 2: 0.4, 3: 0.3, 4: 0.1},
            lane_width_jitter=0.1, edge_line_prob=0.9, kerb_line_prob=0.0, marking_wear=(0.7, 1.0),
            shoulder_m=(1.0, 2.5), road_users={"car": 0.55, "truck": 0.12, "bus": 0.08, "two_wheeler": 0.25},
            traffic_density=(3.0, 7.0), shoulder_two_wheelers=3.0, pedestrians_per_100m=(2.0, 6.0), cone_prob=0.3,
            parked_prob=0.2, vehicle_scale=1.0, double_decker_prob=0.0,
            car_colors={_WHITE: 0.35, _BLACK: 0.25, _SILVER: 0.2, _GREY: 0.1, _RED: 0.05, _BLUE: 0.05},
            asphalt=((62, 62, 64), (85, 85, 85)), concrete_prob=0.1, roadside=((140, 140, 135), (110, 120, 90)),
            urban_prob=0.7, haze_prob=0.5, sign_colors=((20, 80, 170), (245, 245, 245), (0, 120, 70)),
            speed_mps=(6.0, 18.0), city_latlon=(31.230, 121.474),
        ),
        RegionStyle(
            REGIONS["de"], centre_line_weights=(0.7, 0.3), lanes_per_direction={1: 0.4, 2: 0.4, 3: 0.2},
            lane_width_jitter=0.1, edge_line_prob=0.95, kerb_line_prob=0.0, marking_wear=(0.85, 1.0),
            shoulder_m=(0.3, 1.5), road_users={"car": 0.82, "truck": 0.12, "bus": 0.03, "two_wheeler": 0.03},
            traffic_density=(2.0, 5.0), shoulder_two_wheelers=0.0, pedestrians_per_100m=(0.5, 3.0), cone_prob=0.3,
            parked_prob=0.3, vehicle_scale=1.0, double_decker_prob=0.0,
            car_colors={_BLACK: 0.3, _GREY: 0.25, _SILVER: 0.2, _WHITE: 0.15, _BLUE: 0.05, _RED: 0.05},
            asphalt=((55, 55, 58), (70, 70, 72)), concrete_prob=0.05, roadside=((70, 110, 50), (85, 120, 60)),
            urban_prob=0.4, haze_prob=0.1, sign_colors=((20, 80, 170), (245, 245, 245), (250, 200, 0)),
            speed_mps=(10.0, 25.0), city_latlon=(48.137, 11.575),
        ),
        RegionStyle(
            REGIONS["gb"], centre_line_weights=(1.0,), lanes_per_direction={1: 0.6, 2: 0.35, 3: 0.05},
            lane_width_jitter=0.1, edge_line_prob=0.8, kerb_line_prob=0.6, marking_wear=(0.75, 1.0),
            shoulder_m=(0.3, 1.2), road_users={"car": 0.84, "truck": 0.07, "bus": 0.06, "two_wheeler": 0.03},
            traffic_density=(2.0, 5.0), shoulder_two_wheelers=0.3, pedestrians_per_100m=(1.0, 4.0), cone_prob=0.25,
            parked_prob=0.45, vehicle_scale=0.97, double_decker_prob=0.7,
            car_colors={_GREY: 0.25, _BLACK: 0.25, _WHITE: 0.2, _SILVER: 0.15, _BLUE: 0.1, _RED: 0.05},
            asphalt=((60, 60, 62), (80, 80, 82)), concrete_prob=0.0, roadside=((75, 115, 55), (120, 115, 105)),
            urban_prob=0.55, haze_prob=0.2, sign_colors=((20, 80, 170), (245, 245, 245), (0, 110, 60)),
            speed_mps=(6.0, 20.0), city_latlon=(51.507, -0.128),
        ),
        RegionStyle(
            REGIONS["jp"], centre_line_weights=(0.5, 0.25, 0.25), lanes_per_direction={1: 0.55, 2: 0.4, 3: 0.05},
            lane_width_jitter=0.08, edge_line_prob=0.95, kerb_line_prob=0.0, marking_wear=(0.85, 1.0),
            shoulder_m=(0.3, 1.0), road_users={"car": 0.8, "truck": 0.1, "bus": 0.03, "two_wheeler": 0.07},
            traffic_density=(2.0, 5.0), shoulder_two_wheelers=0.5, pedestrians_per_100m=(1.0, 5.0), cone_prob=0.25,
            parked_prob=0.1, vehicle_scale=0.88, double_decker_prob=0.0,
            car_colors={_WHITE: 0.45, _BLACK: 0.15, _SILVER: 0.15, _GREY: 0.1, _BEIGE: 0.1, _BLUE: 0.05},
            asphalt=((62, 62, 66), (78, 78, 82)), concrete_prob=0.0, roadside=((150, 150, 145), (90, 115, 70)),
            urban_prob=0.7, haze_prob=0.1, sign_colors=((20, 80, 170), (245, 245, 245), (200, 30, 30)),
            speed_mps=(6.0, 16.0), city_latlon=(35.681, 139.767),
        ),
        RegionStyle(
            REGIONS["in"], centre_line_weights=(0.7, 0.3), lanes_per_direction={1: 0.55, 2: 0.4, 3: 0.05},
            lane_width_jitter=0.2, edge_line_prob=0.3, kerb_line_prob=0.0, marking_wear=(0.35, 0.8),
            shoulder_m=(1.0, 3.0), road_users={"car": 0.35, "truck": 0.12, "bus": 0.08, "two_wheeler": 0.45},
            traffic_density=(3.0, 7.0), shoulder_two_wheelers=4.0, pedestrians_per_100m=(3.0, 8.0), cone_prob=0.15,
            parked_prob=0.3, vehicle_scale=0.92, double_decker_prob=0.0,
            car_colors={_WHITE: 0.4, _SILVER: 0.2, _RED: 0.1, _GREY: 0.1, _GREEN_YELLOW: 0.1, _BLUE: 0.1},
            asphalt=((85, 82, 78), (105, 100, 92)), concrete_prob=0.05, roadside=((150, 125, 90), (130, 115, 85)),
            urban_prob=0.6, haze_prob=0.5, sign_colors=((20, 80, 170), (245, 245, 245), (0, 120, 70)),
            speed_mps=(5.0, 14.0), city_latlon=(12.972, 77.594),
        ),
        RegionStyle(
            REGIONS["sg"], centre_line_weights=(0.6, 0.4), lanes_per_direction={1: 0.25, 2: 0.45, 3: 0.3},
            lane_width_jitter=0.08, edge_line_prob=0.9, kerb_line_prob=0.7, marking_wear=(0.85, 1.0),
            shoulder_m=(0.3, 1.0), road_users={"car": 0.7, "truck": 0.08, "bus": 0.1, "two_wheeler": 0.12},
            traffic_density=(2.5, 6.0), shoulder_two_wheelers=0.5, pedestrians_per_100m=(1.0, 4.0), cone_prob=0.2,
            parked_prob=0.05, vehicle_scale=1.0, double_decker_prob=0.5,
            car_colors={_WHITE: 0.35, _SILVER: 0.2, _BLACK: 0.2, _GREY: 0.1, _BLUE: 0.05, _RED: 0.05,
                        _DARKBLUE: 0.05},
            asphalt=((55, 55, 58), (68, 68, 70)), concrete_prob=0.0, roadside=((45, 105, 45), (140, 140, 135)),
            urban_prob=0.7, haze_prob=0.15, sign_colors=((20, 80, 170), (245, 245, 245), (0, 120, 70)),
            speed_mps=(8.0, 18.0), city_latlon=(1.290, 103.852),
        ),
    )
}

assert set(STYLES) == set(REGIONS), "every registered region needs a synthetic style"
for _s in STYLES.values():
    assert len(_s.centre_line_weights) == len(_s.region.centre_lines), _s.region.code
